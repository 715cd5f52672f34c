//! `POST /api/v2/query` bodies (and funnel and retention requests): parsed, then run
//! over an empty rollup store, which checks every metric, dimension, filter and range.
#![no_main]
use std::sync::OnceLock;

use footfall_query::{execute, FunnelRequest, QueryRequest, RetentionRequest};
use footfall_store::SnapshotStore;
use libfuzzer_sys::fuzz_target;

fn store() -> &'static SnapshotStore {
    static S: OnceLock<(tempfile::TempDir, SnapshotStore)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        (dir, store)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<QueryRequest>(data) {
        let _ = execute(&req, chrono_tz::Asia::Kolkata, store(), 1_765_000_000_000);
    }
    let _ = serde_json::from_slice::<FunnelRequest>(data);
    let _ = serde_json::from_slice::<RetentionRequest>(data);
});
