//! Answers every EdgeX API shares: multi-status (207) batches and paged lists.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_contracts::common::{BaseRequest, BaseResponse, BaseWithIdResponse, Paging};
use serde::Serialize;

use crate::ApiError;

/// One entry of a 207 answer: the item's outcome (its status and, for a create, the new
/// id), with the item's `requestId` echoed.
pub fn item(
    request_id: &str,
    result: Result<(StatusCode, String), ApiError>,
) -> BaseWithIdResponse {
    let (status, id, message) = match result {
        Ok((s, id)) => (s, id, String::new()),
        Err(e) => (e.status, String::new(), e.message),
    };
    BaseWithIdResponse {
        base: BaseResponse {
            message,
            ..BaseResponse::new(status.as_u16()).with_request_id(request_id)
        },
        id,
    }
}

/// A 207 answer of `entries`, in the order of the request's items.
pub fn multi_status(entries: Vec<BaseWithIdResponse>) -> Response {
    (StatusCode::MULTI_STATUS, axum::Json(entries)).into_response()
}

/// A batch body: a non-empty JSON array of `T` (a 400 otherwise).
pub fn batch<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, ApiError> {
    let items: Vec<T> = crate::error::parse_json(body)?;
    if items.is_empty() {
        return Err(ApiError::bad_request("the request holds no items"));
    }
    Ok(items)
}

/// The validation problems of a batch's items, as one 400 for the whole body (EdgeX's
/// answer when any item fails its own validation).
pub fn refuse(problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(problems.join("; ")))
    }
}

/// The items of a batch after EdgeX's checks of each: its `apiVersion` and `requestId`, and
/// its body (`what`, required) by `check`. One failure refuses the whole body with a 400
/// naming every problem by item, as EdgeX does; else each body with its request's id, in
/// order.
pub fn checked<T>(
    items: Vec<(BaseRequest, Option<T>)>,
    what: &str,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<Vec<(String, T)>, ApiError> {
    let mut problems = Vec::new();
    for (i, (base, body)) in items.iter().enumerate() {
        if let Err(e) = base.check() {
            problems.push(format!("item {i}: {e}"));
        }
        match body {
            Some(b) => {
                if let Err(e) = check(b) {
                    problems.push(format!("item {i}: {e}"));
                }
            }
            None => problems.push(format!("item {i}: {what} is required")),
        }
    }
    refuse(problems)?;
    Ok(items
        .into_iter()
        .filter_map(|(base, body)| Some((base.request_id, body?)))
        .collect())
}

/// Reads the `offset` and `limit` query parameters as EdgeX does: an offset of 0 or more,
/// a limit from -1 (as many as `max`) up to `max`; anything else is a 400.
pub fn page(offset: Option<&str>, limit: Option<&str>, max: u64) -> Result<(u64, u64), ApiError> {
    let offset = match offset {
        None => 0,
        Some(o) => o.parse::<i64>().ok().filter(|o| *o >= 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "querystring offset's value {o} is out of min 0 ~ max {} range.",
                i32::MAX
            ))
        })?,
    };
    let limit = match limit {
        None => 20,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= -1 && (*l == -1 || u64::try_from(*l).is_ok_and(|l| l <= max)))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "querystring limit's value {l} is out of min -1 ~ max {max} range."
                ))
            })?,
    };
    Paging { offset, limit }
        .resolve(max)
        .map_err(ApiError::bad_request)
}

/// A page of a list: `{"apiVersion", "statusCode": 200, "totalCount", <field>: [...]}`
/// for the page at `offset` of `total` items, or a 416 when the offset lies beyond them.
pub fn paged<T: Serialize>(
    field: &str,
    offset: u64,
    total: u64,
    items: Vec<T>,
) -> Result<Response, ApiError> {
    if Paging::out_of_range(offset, total) {
        return Err(ApiError::range_not_satisfiable(offset, total));
    }
    let mut m = serde_json::Map::new();
    m.insert("apiVersion".into(), outpost_contracts::API_VERSION.into());
    m.insert("statusCode".into(), 200.into());
    m.insert("totalCount".into(), total.into());
    m.insert(
        field.into(),
        serde_json::to_value(items).map_err(ApiError::internal)?,
    );
    Ok(axum::Json(serde_json::Value::Object(m)).into_response())
}

/// A `POST /api/v3/secret` body (EdgeX's `SecretRequest`), checked.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretRequest {
    #[serde(flatten)]
    pub base: outpost_contracts::common::BaseRequest,
    pub secret_name: String,
    pub secret_data: Vec<SecretPair>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct SecretPair {
    pub key: String,
    pub value: String,
}

impl SecretRequest {
    /// Parses and checks a body: a name, and at least one pair, each with a key and a value.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let req: Self = crate::error::parse_json(body)?;
        req.base.check().map_err(ApiError::bad_request)?;
        if req.secret_name.trim().is_empty() {
            return Err(ApiError::bad_request("secretName is required"));
        }
        if req.secret_data.is_empty()
            || req
                .secret_data
                .iter()
                .any(|p| p.key.trim().is_empty() || p.value.is_empty())
        {
            return Err(ApiError::bad_request(
                "secretData must hold pairs with a key and a value",
            ));
        }
        Ok(req)
    }

    /// The pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.secret_data
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect()
    }

    /// The 201 answer.
    pub fn created(&self) -> Response {
        let body = BaseResponse::new(201).with_request_id(self.base.request_id.clone());
        (StatusCode::CREATED, axum::Json(body)).into_response()
    }
}

/// ` (did you mean 'X'?)` for the name of `known` closest to `name` (a misspelling: the
/// same but for case, or a few letters off), or nothing: what a 404 for a name adds.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let wanted = name.to_lowercase();
    let bound = (wanted.chars().count() / 3).max(1);
    known
        .into_iter()
        .filter(|k| *k != name)
        .map(|k| (strsim::damerau_levenshtein(&wanted, &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= bound)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_beyond_the_maximum_and_bad_numbers_are_refused() {
        assert_eq!(page(None, None, 1024).unwrap(), (0, 20));
        assert_eq!(page(Some("3"), Some("-1"), 1024).unwrap(), (3, 1024));
        assert_eq!(page(None, Some("1024"), 1024).unwrap(), (0, 1024));
        for (o, l) in [
            (Some("-1"), None),
            (Some("x"), None),
            (None, Some("1025")),
            (None, Some("-2")),
            (None, Some("1.5")),
        ] {
            let e = page(o, l, 1024).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{o:?} {l:?}");
        }
    }

    #[test]
    fn an_offset_beyond_the_items_is_416() {
        assert!(paged::<u8>("x", 4, 3, Vec::new()).is_err());
        assert!(paged::<u8>("x", 3, 3, Vec::new()).is_ok());
        assert!(paged::<u8>("x", 9, 0, Vec::new()).is_ok());
    }

    #[test]
    fn a_misspelt_name_gets_the_nearest_known_one() {
        let known = ["Temperature", "Humidity", "Setpoint"];
        assert_eq!(
            did_you_mean("Temprature", known),
            " (did you mean 'Temperature'?)"
        );
        assert_eq!(
            did_you_mean("temperature", known),
            " (did you mean 'Temperature'?)"
        );
        assert_eq!(did_you_mean("Pressure", known), "");
        assert_eq!(did_you_mean("t11", ["t1", "t2"]), " (did you mean 't1'?)");
        assert_eq!(did_you_mean("x", std::iter::empty()), "");
    }
}
