//! Plausible's `POST /api/event` bodies.
#![no_main]
use footfall_collector::plausible::{hash_route_url, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = hash_route_url(s);
    }
});
