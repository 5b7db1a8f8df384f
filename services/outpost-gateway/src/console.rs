//! The web console (`web/`), served under `/ui/` from the files built into the binary
//! (`build.rs` takes `web/dist`), or from `gateway.static_dir` when one is configured.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and connections
//! from the gateway only, nothing inline, no framing), so an injected string cannot run;
//! the hashed assets are cached for a year, the page itself revalidated each time. Text
//! files go out brotli- or gzip-compressed as the browser accepts, compressed at build.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// One file of the console's build, with its compressed copies.
pub struct File {
    /// Its path under `/ui/`.
    pub path: &'static str,
    pub raw: &'static [u8],
    pub gzip: Option<&'static [u8]>,
    pub brotli: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/console.rs"));

/// What the console's pages may load and where they may connect: the gateway only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether the binary holds a console build.
pub fn built() -> bool {
    !FILES.is_empty()
}

/// The content type of a file named with `ext`.
pub fn content_type(ext: &str) -> &'static str {
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "yaml" | "yml" => "application/yaml",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The headers every console answer carries: its type, the policy, and no sniffing,
/// referrers or framing.
pub fn headers(ext: &str) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(ext)),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

/// The built-in file at `rel` (`""` is the page), compressed as `request` accepts.
pub fn serve(rel: &str, request: &HeaderMap) -> Option<Response> {
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let file = FILES.iter().find(|f| f.path == rel)?;
    let path = file.path;
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    let (body, encoding) = match encoding(request, file.brotli.is_some(), file.gzip.is_some()) {
        Some("br") => (file.brotli.unwrap_or(file.raw), Some("br")),
        Some("gzip") => (file.gzip.unwrap_or(file.raw), Some("gzip")),
        _ => (file.raw, None),
    };
    // Assets are named by their content: they never change under one name.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (headers(ext), body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    Some(r)
}

/// The encoding to answer `request` with: brotli, then gzip, when there is such a copy
/// and the request accepts it (`Accept-Encoding`, a `q=0` refusing it).
fn encoding(request: &HeaderMap, brotli: bool, gzip: bool) -> Option<&'static str> {
    let accepts = |enc: &str| {
        request
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let mut parts = t.split(';');
                parts
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(enc))
                    && parts.all(|p| {
                        let p = p.replace(' ', "").to_ascii_lowercase();
                        !matches!(p.as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000")
                    })
            })
    };
    if brotli && accepts("br") {
        Some("br")
    } else if gzip && accepts("gzip") {
        Some("gzip")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn brotli_then_gzip_as_the_browser_accepts() {
        assert_eq!(
            encoding(&asking("gzip, deflate, br, zstd"), true, true),
            Some("br")
        );
        assert_eq!(
            encoding(&asking("gzip, deflate, br"), false, true),
            Some("gzip")
        );
        assert_eq!(
            encoding(&asking("br;q=0, gzip;q=0.5"), true, true),
            Some("gzip")
        );
        assert_eq!(encoding(&asking("gzip; q=0"), true, true), None);
        assert_eq!(encoding(&asking("GZIP;Q=0, BR"), true, true), Some("br"));
        assert_eq!(encoding(&asking("identity"), true, true), None);
        assert_eq!(encoding(&HeaderMap::new(), true, true), None);
    }

    #[test]
    fn the_policy_allows_nothing_from_elsewhere_and_nothing_inline() {
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CSP.contains(part), "{part}");
        }
        assert!(!CSP.contains("unsafe"));
    }
}
