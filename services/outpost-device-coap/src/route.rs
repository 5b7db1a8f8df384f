//! What a CoAP request asks for, read from its options alone (no I/O, fuzzed): the device
//! and resource from Uri-Path, the device's secret from Uri-Query, the payload's encoding
//! from Content-Format, and any option the service must refuse.
//!
//! Paths: `/<device>/<resource>` (one value), `/<device>` (an object of resource → value,
//! with an optional `timestamp`), and EdgeX device-coap's `/a1r/<device>/<resource>`.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use outpost_device_sdk::payload::Format;

/// EdgeX device-coap's path prefix.
pub const EDGEX_PREFIX: &str = "a1r";

/// Content-Format numbers (RFC 7252 §12.3, RFC 7049).
pub const TEXT: u16 = 0;
pub const OCTET_STREAM: u16 = 42;
pub const JSON: u16 = 50;
pub const CBOR: u16 = 60;

/// Options this service understands. Any other critical option (an odd number) makes the
/// request fail with 4.02, as RFC 7252 §5.4.1 requires.
const UNDERSTOOD: [CoapOption; 10] = [
    CoapOption::UriHost,
    CoapOption::UriPort,
    CoapOption::UriPath,
    CoapOption::UriQuery,
    CoapOption::ContentFormat,
    CoapOption::Accept,
    CoapOption::Block1,
    CoapOption::Size1,
    CoapOption::Observe,
    CoapOption::NoResponse,
];

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No Content-Format: told by the resource's type (as device-rest does).
    Unnamed,
    /// application/octet-stream: the bytes of a Binary resource.
    Bytes,
    Named(Format),
}

impl Encoding {
    /// The format to parse with, when the device named one.
    pub fn format(self) -> Option<Format> {
        match self {
            Self::Named(f) => Some(f),
            Self::Unnamed | Self::Bytes => None,
        }
    }
}

/// A request for a device's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub method: RequestType,
    pub device: String,
    /// `None`: an object of several resources.
    pub resource: Option<String>,
    pub secret: Option<String>,
    pub encoding: Encoding,
}

/// A request refused before anything else is done, with the response code and a
/// diagnostic for the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ResponseType,
    pub why: String,
}

impl Refusal {
    pub fn new(code: ResponseType, why: impl Into<String>) -> Self {
        Self {
            code,
            why: why.into(),
        }
    }
}

/// Reads the route of a request message.
pub fn parse(p: &Packet) -> Result<Route, Refusal> {
    let MessageClass::Request(method) = p.header.code else {
        return Err(Refusal::new(ResponseType::BadRequest, "not a request"));
    };
    if let Some((n, _)) = p
        .options()
        .find(|(n, _)| *n % 2 == 1 && !UNDERSTOOD.iter().any(|o| u16::from(*o) == **n))
    {
        return Err(Refusal::new(
            ResponseType::BadOption,
            format!("option {n} is not supported"),
        ));
    }
    let mut path = Vec::new();
    for segment in p.get_option(CoapOption::UriPath).into_iter().flatten() {
        let s = std::str::from_utf8(segment)
            .map_err(|_| Refusal::new(ResponseType::BadRequest, "a path segment is not UTF-8"))?;
        if !s.is_empty() {
            path.push(s);
        }
    }
    let (device, resource) = match path.as_slice() {
        [EDGEX_PREFIX, d, r] | [d, r] => (*d, Some(*r)),
        [d] if *d != EDGEX_PREFIX => (*d, None),
        _ => {
            return Err(Refusal::new(
                ResponseType::NotFound,
                "the path is /<device>/<resource> or /<device>",
            ));
        }
    };
    let mut secret = None;
    for q in p.get_option(CoapOption::UriQuery).into_iter().flatten() {
        let q = std::str::from_utf8(q)
            .map_err(|_| Refusal::new(ResponseType::BadRequest, "a query is not UTF-8"))?;
        if let Some(s) = q.strip_prefix("secret=") {
            secret = Some(s.to_string());
        }
    }
    let encoding = match content_format(p)? {
        None => Encoding::Unnamed,
        Some(TEXT) => Encoding::Named(Format::Text),
        Some(JSON) => Encoding::Named(Format::Json),
        Some(CBOR) => Encoding::Named(Format::Cbor),
        Some(OCTET_STREAM) => Encoding::Bytes,
        Some(n) => {
            return Err(Refusal::new(
                ResponseType::UnsupportedContentFormat,
                format!("Content-Format {n}: text (0), JSON (50), CBOR (60) or octet-stream (42)"),
            ));
        }
    };
    Ok(Route {
        method,
        device: device.to_string(),
        resource: resource.map(str::to_string),
        secret,
        encoding,
    })
}

/// The Content-Format option, an unsigned integer of up to two bytes.
fn content_format(p: &Packet) -> Result<Option<u16>, Refusal> {
    let Some(v) = p.get_first_option(CoapOption::ContentFormat) else {
        return Ok(None);
    };
    if v.len() > 2 {
        return Err(Refusal::new(
            ResponseType::BadOption,
            "Content-Format is at most two bytes",
        ));
    }
    Ok(Some(v.iter().fold(0u16, |n, b| (n << 8) | u16::from(*b))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::MessageType;

    fn request(method: RequestType, path: &[&str], query: &[&str], cf: Option<u16>) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        for s in path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(n) = cf {
            let bytes = if n == 0 {
                Vec::new()
            } else {
                n.to_be_bytes()
                    .into_iter()
                    .skip_while(|b| *b == 0)
                    .collect()
            };
            p.add_option(CoapOption::ContentFormat, bytes);
        }
        p
    }

    #[test]
    fn the_three_paths() {
        let r = parse(&request(
            RequestType::Post,
            &["dev1", "Temperature"],
            &["secret=s3"],
            Some(TEXT),
        ))
        .expect("route");
        assert_eq!(
            r,
            Route {
                method: RequestType::Post,
                device: "dev1".into(),
                resource: Some("Temperature".into()),
                secret: Some("s3".into()),
                encoding: Encoding::Named(Format::Text),
            }
        );
        let r = parse(&request(RequestType::Put, &["dev1"], &[], Some(CBOR))).expect("route");
        assert_eq!((r.device.as_str(), r.resource), ("dev1", None));
        assert_eq!(r.encoding, Encoding::Named(Format::Cbor));
        let r = parse(&request(
            RequestType::Post,
            &["a1r", "dev1", "int"],
            &[],
            None,
        ))
        .expect("route");
        assert_eq!(r.resource.as_deref(), Some("int"));
        assert_eq!(r.encoding, Encoding::Unnamed);
        let r = parse(&request(RequestType::Post, &["d", "r"], &[], Some(JSON))).expect("route");
        assert_eq!(r.encoding, Encoding::Named(Format::Json));
        let r = parse(&request(
            RequestType::Post,
            &["d", "r"],
            &[],
            Some(OCTET_STREAM),
        ))
        .expect("route");
        assert_eq!(r.encoding, Encoding::Bytes);
    }

    #[test]
    fn what_is_refused() {
        let code = |p: Packet| parse(&p).expect_err("refused").code;
        assert_eq!(
            code(request(RequestType::Post, &[], &[], None)),
            ResponseType::NotFound
        );
        assert_eq!(
            code(request(RequestType::Post, &["a", "b", "c"], &[], None)),
            ResponseType::NotFound
        );
        assert_eq!(
            code(request(RequestType::Post, &["a1r"], &[], None)),
            ResponseType::NotFound
        );
        assert_eq!(
            code(request(RequestType::Post, &["d", "r"], &[], Some(41))),
            ResponseType::UnsupportedContentFormat
        );
        let mut p = request(RequestType::Post, &["d", "r"], &[], None);
        p.add_option(CoapOption::ProxyUri, b"coap://elsewhere/".to_vec());
        assert_eq!(code(p), ResponseType::BadOption);
        let mut p = request(RequestType::Post, &["d", "r"], &[], None);
        p.add_option(CoapOption::ContentFormat, vec![1, 2, 3]);
        assert_eq!(code(p), ResponseType::BadOption);
        let mut p = request(RequestType::Post, &["d"], &[], None);
        p.add_option(CoapOption::UriPath, vec![0xff]);
        assert_eq!(code(p), ResponseType::BadRequest);
        // Elective options it does not know (ETag, 4) are ignored.
        let mut p = request(RequestType::Post, &["d", "r"], &[], None);
        p.add_option(CoapOption::ETag, vec![1]);
        assert!(parse(&p).is_ok());
    }
}
