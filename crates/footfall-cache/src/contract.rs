//! The [`ResultCache`] contract as one suite that every implementation runs against
//! itself (memory in this crate's tests, Redis where a server is at hand).

use std::time::Duration;

use bytes::Bytes;

use crate::ResultCache;

/// Runs every check on a cache made with `ttl` (about 300 ms: the suite waits past it).
pub async fn run(cache: &dyn ResultCache, ttl: Duration) {
    let tag = format!("contract-{}-{}", std::process::id(), rand_suffix());
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    assert_eq!(cache.get(&a).await, None, "a new key misses");
    cache.put(&a, Bytes::from_static(b"answer a")).await;
    cache.put(&b, Bytes::from_static(b"answer b")).await;
    assert_eq!(
        cache.get(&a).await.as_deref(),
        Some(&b"answer a"[..]),
        "a put is got back"
    );
    assert_eq!(
        cache.get(&b).await.as_deref(),
        Some(&b"answer b"[..]),
        "keys keep their own answers"
    );
    cache.put(&a, Bytes::from_static(b"answer a, later")).await;
    assert_eq!(
        cache.get(&a).await.as_deref(),
        Some(&b"answer a, later"[..]),
        "the last put wins"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(cache.get(&a).await, None, "nothing is kept past its ttl");
    assert_eq!(cache.get(&b).await, None, "nothing is kept past its ttl");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
