//! gtag.js `/g/collect` hits: a query string and a body of hit lines (the input is
//! split at its first newline into the two).
#![no_main]
use footfall_collector::gtag::{event, hits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (query, body) = s.split_once('\n').unwrap_or((s, ""));
    for hit in hits(query, body) {
        let _ = event(&hit);
    }
});
