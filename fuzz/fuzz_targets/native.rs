//! `POST /api/v1/events` bodies: the body split into events, each validated.
#![no_main]
use footfall_event::native::{parse_body, parse_event, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(events) = parse_body(data, &limits) {
        for e in &events {
            let _ = parse_event(e, &limits);
        }
    }
});
