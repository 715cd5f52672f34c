//! Segment's HTTP API bodies, gzip or not: each message of a batch as an event.
#![no_main]
use footfall_collector::segment::{event, maybe_gunzip, time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = match maybe_gunzip(data) {
        Ok(Some(b)) => b,
        Ok(None) => data.to_vec(),
        Err(_) => return,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return;
    };
    let sent = time(v.get("sentAt"));
    let messages = match v.get("batch").and_then(|b| b.as_array()) {
        Some(b) => b.clone(),
        None => vec![v.clone()],
    };
    for m in &messages {
        let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("track");
        let _ = event(m, kind, "FF-FUZZ", sent, 1_765_000_000_000);
    }
});
