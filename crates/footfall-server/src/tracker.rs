//! The browser tracker script (`footfall.js`), served gzipped to clients that accept it.

use std::io::Write;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The script as written (readable; it is small enough not to need minifying).
pub const SCRIPT: &str = include_str!("footfall.js");

/// The script gzipped once per process.
pub fn gzipped() -> &'static [u8] {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    GZ.get_or_init(|| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(SCRIPT.as_bytes()).expect("in-memory gzip");
        e.finish().expect("in-memory gzip")
    })
}

pub(crate) async fn script(headers: HeaderMap) -> Response {
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if gzip_ok {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (h, gzipped()).into_response()
    } else {
        (h, SCRIPT).into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_is_under_two_kilobytes_gzipped() {
        let n = super::gzipped().len();
        assert!(n < 2048, "footfall.js is {n} bytes gzipped");
        eprintln!(
            "footfall.js: {} bytes, {n} bytes gzipped",
            super::SCRIPT.len()
        );
    }
}
