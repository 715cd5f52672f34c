//! GA4 Measurement Protocol requests: the query string (first line) and the JSON body,
//! validated and translated against a metadata store with one property and its secret.
#![no_main]
use std::sync::{Arc, OnceLock};

use footfall_collector::{ga4::translate, query_map};
use footfall_meta::{MetaCache, MetaStore, SqliteMeta};
use libfuzzer_sys::fuzz_target;

fn cache() -> &'static MetaCache {
    static C: OnceLock<(tempfile::TempDir, MetaCache)> = OnceLock::new();
    &C.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(dir.path().join("meta.db")).unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(meta);
        let cache = MetaCache::new(meta).unwrap();
        (dir, cache)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(query) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or(&[]);
    let _ = translate(cache(), &query_map(query), body, 1_765_000_000_000);
});
