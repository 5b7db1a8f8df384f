//! Tables that keep each item as a JSON document in a `body` column (the support services'
//! notifications, subscriptions, jobs, records): reading them back, all or a page.

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::de::DeserializeOwned;

/// The documents a query selecting one `body` column finds, decoded, in its order.
pub fn all<T, E>(c: &Connection, sql: &str, args: &[Value]) -> Result<Vec<T>, E>
where
    T: DeserializeOwned,
    E: From<rusqlite::Error> + From<serde_json::Error>,
{
    let mut st = c.prepare(sql)?;
    let bodies = st
        .query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).map_err(E::from))
        .collect()
}

/// One page of `table`'s documents matching `clause` (`WHERE ...` over `args`, or empty),
/// in `order`: how many match in all, and those from `offset`, at most `limit`.
pub fn page<T, E>(
    c: &Connection,
    table: &str,
    clause: &str,
    order: &str,
    mut args: Vec<Value>,
    offset: u64,
    limit: u64,
) -> Result<(u64, Vec<T>), E>
where
    T: DeserializeOwned,
    E: From<rusqlite::Error> + From<serde_json::Error>,
{
    let total: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM {table} {clause}"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    args.push(Value::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
    let sql = format!("SELECT body FROM {table} {clause} ORDER BY {order} LIMIT ? OFFSET ?");
    let items = all::<T, E>(c, &sql, &args)?;
    Ok((u64::try_from(total).unwrap_or(0), items))
}
