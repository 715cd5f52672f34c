//! The cache contract on each implementation. Redis: the server scripts/redis.sh starts
//! (`FOOTFALL_TEST_REDIS`); skipped loudly without one, failed under CI.

use std::time::{Duration, Instant};

use footfall_cache::{MemoryCache, RedisCache, ResultCache, REDIS_TIMEOUT};

const TTL: Duration = Duration::from_millis(300);

#[tokio::test]
async fn memory_cache_keeps_the_contract() {
    footfall_cache::contract::run(&MemoryCache::new(TTL, 1 << 20), TTL).await;
}

fn redis_url(test: &str) -> Option<String> {
    match std::env::var("FOOTFALL_TEST_REDIS") {
        Ok(u) => Some(u),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: FOOTFALL_TEST_REDIS is not set under CI: run the tests through scripts/test.sh")
        }
        Err(_) => {
            eprintln!("\n*** SKIPPED {test}: FOOTFALL_TEST_REDIS is not set (scripts/redis.sh start) ***\n");
            None
        }
    }
}

#[tokio::test]
async fn redis_cache_keeps_the_contract() {
    let Some(url) = redis_url("redis_cache_keeps_the_contract") else {
        return;
    };
    let cache = RedisCache::new(&url, TTL, "footfall-test:").unwrap();
    footfall_cache::contract::run(&cache, TTL).await;
}

/// A Redis that cannot be reached costs a query nothing but the miss: no error, and
/// no wait beyond the cache's timeout.
#[tokio::test]
async fn an_unreachable_redis_misses_at_once() {
    let cache = RedisCache::new("redis://127.0.0.1:1/", TTL, "x:").unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(cache.get("k").await, None);
        cache.put("k", bytes::Bytes::from_static(b"v")).await;
        assert!(t.elapsed() < REDIS_TIMEOUT * 3, "took {:?}", t.elapsed());
    }
}
