//! What the CLI prints: an answer as JSON for scripts (`--json`: exactly what the service
//! sent), or read as its type from outpost-contracts and shown to people, mostly as an
//! aligned table; and the small formatting helpers they share.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::decode;

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints an answer: as it came with `--json`, otherwise read as `T` and shown by `human`.
pub(crate) fn show<T: DeserializeOwned>(
    answer: Value,
    json: bool,
    human: impl FnOnce(T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json {
        print_json(&answer);
        return Ok(());
    }
    human(decode(answer)?)
}

/// [`show`] as a table: `headers`, and the rows made of the answer.
pub(crate) fn show_table<T: DeserializeOwned>(
    answer: Value,
    json: bool,
    headers: &[&str],
    rows: impl FnOnce(T) -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    show(answer, json, |t| {
        table(headers, &rows(t));
        Ok(())
    })
}

/// Prints rows as an aligned table.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A value as a cell: text as itself, nothing for null, anything else as its JSON
/// (`1.0`, `true`); enums read as their wire names (`UNLOCKED`, `rolledBack`).
pub(crate) fn cell<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(Value::Null) | Err(_) => String::new(),
        Ok(other) => other.to_string(),
    }
}

/// The field `key` of an untyped answer as a cell (see [`cell`]).
pub(crate) fn s(v: &Value, key: &str) -> String {
    v.get(key).map(cell).unwrap_or_default()
}

pub(crate) fn ago(millis: i64) -> String {
    if millis <= 0 {
        return "-".into();
    }
    let now = outpost_contracts::now_millis();
    let secs = (now - millis).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// A size for people: `512 B`, `1.5 KiB`, `256 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 && v.fract() >= 0.05 { 1 } else { 0 };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// A duration for people: `45s`, `12m 5s`, `3h 20m`, `2d 4h`.
pub(crate) fn span(millis: u64) -> String {
    let s = millis / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) fn time_of(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_spans_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 * 1024 * 1024), "256 MiB");
        assert_eq!(bytes(10 * 1024 * 1024 + 1), "10 MiB");
        assert_eq!(span(45_000), "45s");
        assert_eq!(span(725_000), "12m 5s");
        assert_eq!(span(12_000_000), "3h 20m");
        assert_eq!(span(187_200_000), "2d 4h");
    }

    #[test]
    fn cells_read_as_the_json_they_came_from() {
        assert_eq!(cell("text"), "text");
        assert_eq!(cell(&None::<u64>), "");
        assert_eq!(cell(&Some(1.0_f64)), "1.0");
        assert_eq!(cell(&42_u32), "42");
        assert_eq!(
            cell(&outpost_contracts::metadata::AdminState::Unlocked),
            "UNLOCKED"
        );
        assert_eq!(
            cell(&outpost_contracts::ota::DeviceState::RolledBack),
            "rolledBack"
        );
        let answer = serde_json::json!({"name": "n", "port": 59880, "gone": null});
        assert_eq!(
            [
                s(&answer, "name"),
                s(&answer, "port"),
                s(&answer, "gone"),
                s(&answer, "none")
            ],
            ["n", "59880", "", ""]
        );
    }
}
