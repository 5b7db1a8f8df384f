//! The request and response envelopes shared by every EdgeX v3 endpoint.

use serde::{Deserialize, Serialize, Serializer};

use crate::API_VERSION;

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// Fields every EdgeX request DTO carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BaseRequest {
    #[serde(skip_serializing_if = "is_empty")]
    pub request_id: String,
    pub api_version: String,
}

impl BaseRequest {
    pub fn new() -> Self {
        Self {
            request_id: String::new(),
            api_version: API_VERSION.to_string(),
        }
    }

    /// EdgeX rejects requests whose `apiVersion` is not `v3`.
    pub fn check(&self) -> Result<(), String> {
        if self.api_version != API_VERSION {
            return Err(format!(
                "apiVersion must be '{API_VERSION}', got '{}'",
                self.api_version
            ));
        }
        if !self.request_id.is_empty() && uuid::Uuid::parse_str(&self.request_id).is_err() {
            return Err(format!("requestId '{}' is not a UUID", self.request_id));
        }
        Ok(())
    }
}

/// A boolean query parameter as EdgeX reads it (Go's `strconv.ParseBool`): `1`, `t`, `T`,
/// `TRUE`, `true`, `True`, `0`, `f`, `F`, `FALSE`, `false`, `False`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `#[serde(deserialize_with = "query_bool")]` for a boolean query parameter, read as
/// [`parse_bool`] does.
pub fn query_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    parse_bool(&s).ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not true or false")))
}

/// [`query_bool`] for an optional parameter (with `#[serde(default)]`).
pub fn query_opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    query_bool(d).map(Some)
}

/// Fields every EdgeX response carries; errors put their text in `message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BaseResponse {
    pub api_version: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub request_id: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub message: String,
    pub status_code: u16,
}

impl BaseResponse {
    pub fn new(status_code: u16) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            request_id: String::new(),
            message: String::new(),
            status_code,
        }
    }

    pub fn with_message(status_code: u16, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::new(status_code)
        }
    }

    /// Echoes the request's `requestId`, which EdgeX defines as a UUID: anything else (a
    /// request refused for carrying one) is not repeated back.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        let id = request_id.into();
        if uuid::Uuid::parse_str(&id).is_ok() {
            self.request_id = id;
        }
        self
    }
}

/// EdgeX's error body: a [`BaseResponse`] with a message.
pub type ErrorResponse = BaseResponse;

/// One entry of a multi-status (207) answer, or the answer to a create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BaseWithIdResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
}

/// A count, as `/event/count` and friends return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CountResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PingResponse {
    pub api_version: String,
    pub timestamp: String,
    pub service_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionResponse {
    pub api_version: String,
    /// The EdgeX release whose API this serves ([`crate::EDGEX_RELEASE`]), as EdgeX
    /// clients expect.
    pub version: String,
    pub service_name: String,
    /// Outpost's own version.
    #[serde(skip_serializing_if = "is_empty")]
    pub outpost_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigResponse {
    pub api_version: String,
    pub service_name: String,
    pub config: serde_json::Value,
}

/// A paged list: `totalCount` plus the named list field of the concrete response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BaseWithTotalCountResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub total_count: u64,
}

impl BaseWithTotalCountResponse {
    /// A successful (200) page of `total_count` items in all.
    pub fn new(total_count: u64) -> Self {
        Self {
            base: BaseResponse::new(200),
            total_count,
        }
    }
}

/// A body written with the keys of every object in sorted order, nested objects included.
///
/// Many answers of Outpost's own APIs (ota, cloud, export, ...) have always gone out with
/// sorted keys, since they were assembled as JSON values (serde_json's map orders its keys).
/// Their typed forms are written through this wrapper so the bytes on the wire stay the same:
/// clients compare and cache bodies, and an ETag is a digest of one.
#[derive(Debug, Clone, PartialEq)]
pub struct SortedKeys<T>(pub T);

impl<T: Serialize> Serialize for SortedKeys<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(&self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

/// The `offset`/`limit` query parameters of EdgeX list endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Paging {
    /// Items to skip; `-1` (core-data only) skips computing the total count.
    pub offset: i64,
    /// Items to return; `-1` means every remaining item up to the service's maximum.
    pub limit: i64,
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: 20,
        }
    }
}

impl Paging {
    /// Validates and resolves the page against the service's maximum result count:
    /// `(offset, limit)` as plain numbers.
    pub fn resolve(self, max_result_count: u64) -> Result<(u64, u64), String> {
        if self.offset < -1 {
            return Err(format!("offset must be >= 0, got {}", self.offset));
        }
        // EdgeX refuses a limit beyond the service's maximum rather than cutting it.
        if self.limit < -1 || u64::try_from(self.limit).is_ok_and(|l| l > max_result_count) {
            return Err(format!(
                "querystring limit's value {} is out of min -1 ~ max {max_result_count} range.",
                self.limit
            ));
        }
        let offset = u64::try_from(self.offset.max(0)).unwrap_or(0);
        let limit = if self.limit == -1 {
            max_result_count
        } else {
            u64::try_from(self.limit).unwrap_or(0).min(max_result_count)
        };
        Ok((offset, limit))
    }

    /// EdgeX answers 416 when the offset lies beyond the stored items (an empty
    /// collection answers an empty page at any offset).
    pub fn out_of_range(offset: u64, total: u64) -> bool {
        total > 0 && offset > total
    }
}

/// Declares an EdgeX request DTO: [`BaseRequest`]'s fields (`apiVersion`, `requestId`)
/// beside its own, at the top level of one JSON object.
///
/// It is written out as one struct with `base: BaseRequest` (serialized flat), and read
/// through a struct that names every field, so [`crate::json`] matches all of them in any
/// case, as Go's `encoding/json` does: serde's `flatten` would read the object as a map,
/// whose keys must match exactly, and lose the matching of everything inside it too.
/// `read_only` declares a request that is only read (no `Serialize`).
#[macro_export]
macro_rules! edgex_request {
    (
        $(#[$m:meta])*
        pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : $ty:ty ),* $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, ::serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(flatten)]
            pub base: $crate::common::BaseRequest,
            $( $(#[$fm])* pub $field: $ty, )*
        }
        $crate::edgex_request!(@read $name { $( $(#[$fm])* $field: $ty, )* });
    };
    (
        read_only
        $(#[$m:meta])*
        pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : $ty:ty ),* $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            pub base: $crate::common::BaseRequest,
            $( $(#[$fm])* pub $field: $ty, )*
        }
        $crate::edgex_request!(@read $name { $( $(#[$fm])* $field: $ty, )* });
    };
    (@read $name:ident { $( $(#[$fm:meta])* $field:ident : $ty:ty, )* }) => {
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(::serde::Deserialize, Default)]
                #[serde(rename_all = "camelCase", default)]
                struct Flat {
                    request_id: String,
                    api_version: String,
                    $( $(#[$fm])* $field: $ty, )*
                }
                let f = <Flat as ::serde::Deserialize>::deserialize(d)?;
                Ok(Self {
                    base: $crate::common::BaseRequest {
                        request_id: f.request_id,
                        api_version: f.api_version,
                    },
                    $( $field: f.$field, )*
                })
            }
        }
    };
}

/// Reads an EdgeX YAML (or JSON) document as `T`, and names the keys it ignored, each
/// with its line: EdgeX accepts unknown keys, so a misspelt one (`deviceResource:`) would
/// silently drop what it holds; the caller warns.
pub fn from_yaml_noting_unknown<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<(T, Vec<String>), serde_norway::Error> {
    let mut ignored = Vec::new();
    let value = serde_ignored::deserialize(serde_norway::Deserializer::from_str(text), |path| {
        ignored.push(path.to_string());
    })?;
    let notes = ignored
        .into_iter()
        .map(|path| {
            let key = path.rsplit('.').next().unwrap_or(&path).to_string();
            match line_of_key(text, &key) {
                Some(n) => format!("unknown key '{path}' (line {n})"),
                None => format!("unknown key '{path}'"),
            }
        })
        .collect();
    Ok((value, notes))
}

/// The first line (from 1) where `key` is written as a mapping key, in YAML or JSON.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let l = line.trim_start().trim_start_matches("- ").trim_start();
            l.starts_with(&format!("{key}:"))
                || l.starts_with(&format!("'{key}':"))
                || l.contains(&format!("\"{key}\":"))
                || l.contains(&format!("{{ {key}:"))
                || l.contains(&format!(", {key}:"))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_matches_edgex() {
        let body = serde_json::to_value(BaseResponse::with_message(404, "not found")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"apiVersion":"v3","message":"not found","statusCode":404})
        );
    }

    #[test]
    fn sorted_keys_sorts_nested_objects_too() {
        #[derive(Serialize)]
        struct Inner {
            z: u8,
            a: u8,
        }
        #[derive(Serialize)]
        struct Outer {
            b: Inner,
            a: Vec<Inner>,
        }
        let v = Outer {
            b: Inner { z: 1, a: 2 },
            a: vec![Inner { z: 3, a: 4 }],
        };
        assert_eq!(
            serde_json::to_string(&SortedKeys(&v)).unwrap(),
            r#"{"a":[{"a":4,"z":3}],"b":{"a":2,"z":1}}"#
        );
    }

    #[test]
    fn paging_resolves_minus_one_to_max() {
        let p = Paging {
            offset: 0,
            limit: -1,
        };
        assert_eq!(p.resolve(1000).unwrap(), (0, 1000));
        assert!(
            Paging {
                offset: -2,
                limit: 1
            }
            .resolve(10)
            .is_err()
        );
    }

    #[test]
    fn base_request_rejects_wrong_version() {
        let r = BaseRequest {
            request_id: String::new(),
            api_version: "v2".into(),
        };
        assert!(r.check().is_err());
        assert!(BaseRequest::new().check().is_ok());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = "name: p\ndeviceResource:\n  - name: T\nmanufacturer: m\n";
        let (p, notes) =
            from_yaml_noting_unknown::<crate::metadata::DeviceProfile>(text).expect("parses");
        assert_eq!(p.name, "p");
        assert!(p.device_resources.is_empty());
        assert_eq!(notes, ["unknown key 'deviceResource' (line 2)"]);
        let text = "name: p\ndeviceResources:\n  - name: T\n    propertis: { valueType: Int8 }\n";
        let (_, notes) =
            from_yaml_noting_unknown::<crate::metadata::DeviceProfile>(text).expect("parses");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("propertis") && notes[0].ends_with("(line 4)"),
            "{notes:?}"
        );
        let (_, notes) = from_yaml_noting_unknown::<crate::metadata::DeviceProfile>(
            "{\"name\": \"p\", \"modle\": \"x\"}",
        )
        .expect("parses");
        assert_eq!(notes, ["unknown key 'modle' (line 1)"]);
    }
}
