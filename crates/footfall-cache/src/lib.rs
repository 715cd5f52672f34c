//! Answers of the query API kept for a short while, so that a dashboard loaded by many
//! people, or reloaded, is computed once per `ttl`.
//!
//! [`ResultCache`] is the seam; [`MemoryCache`] keeps answers in the process (moka),
//! [`RedisCache`] in a Redis server shared by every query node. The caller builds keys
//! from everything that decides an answer and chooses the `ttl` so that a cached answer
//! is never older than the freshness bound (docs/DISTRIBUTED.md).

pub mod contract;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Query answers by key, each for at most the cache's `ttl`.
///
/// Contract (every implementation passes [`contract::run`]):
/// - `get` returns what `put` last stored under that key if that was within `ttl`, or
///   nothing; an entry may go sooner (memory pressure, a restart), never later, and a
///   key never returns another key's answer.
/// - A cache that cannot answer (a server down, slow, or full) misses: `get` returns
///   `None` and `put` does nothing, within the cache's own short timeout, never an
///   error for the query to fail on.
pub trait ResultCache: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Bytes>>;
    fn put<'a>(&'a self, key: &'a str, answer: Bytes) -> BoxFuture<'a, ()>;
    /// `memory` or `redis`, for metrics and logs.
    fn kind(&self) -> &'static str;
}

/// Answers in this process, bounded in bytes.
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Bytes>,
}

impl MemoryCache {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_bytes)
                .weigher(|k: &String, v: &Bytes| {
                    (k.len() + v.len() + 64).min(u32::MAX as usize) as u32
                })
                .build(),
        }
    }
}

impl ResultCache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Bytes>> {
        Box::pin(async move { self.entries.get(key) })
    }

    fn put<'a>(&'a self, key: &'a str, answer: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.entries.insert(key.to_string(), answer) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// How long one Redis command may take before the query goes on without the cache.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a cache whose Redis is unreachable tries to connect again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How often the same Redis trouble is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Answers in a Redis server shared by the query nodes: an answer one node computed is
/// a hit on every other within `ttl`. Entries expire in Redis (`SET … PX ttl`). While
/// Redis cannot be reached, every lookup misses at once (one connection attempt a
/// second), queries are answered uncached, and a warning is logged every 10 s.
pub struct RedisCache {
    client: redis::Client,
    ttl: Duration,
    prefix: String,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    last_attempt: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
}

impl RedisCache {
    /// `url`: `redis://host:port[/db]`. Keys are `prefix` + the caller's key, so that
    /// one Redis can serve several clusters.
    pub fn new(url: &str, ttl: Duration, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url `{url}`: {e}"))?;
        Ok(Self {
            client,
            ttl,
            prefix: prefix.to_string(),
            conn: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            last_warning: Mutex::new(None),
        })
    }

    fn warn(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut last = self.last_warning.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %error, "query cache: Redis {what} failed; answering uncached");
        }
    }

    /// The shared connection, or a new one (at most one attempt a second).
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Some(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match tokio::time::timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => {
                *conn = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.warn("connection", &e);
                None
            }
            Err(_) => {
                self.warn("connection", &"timed out");
                None
            }
        }
    }

    /// Runs `cmd`, giving up after [`REDIS_TIMEOUT`]; a failure drops the connection.
    async fn run<T: redis::FromRedisValue>(&self, what: &str, cmd: redis::Cmd) -> Option<T> {
        let mut c = self.connection().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.warn(what, &e);
                *self.conn.lock().await = None;
                None
            }
            Err(_) => {
                self.warn(what, &"timed out");
                *self.conn.lock().await = None;
                None
            }
        }
    }
}

impl ResultCache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(format!("{}{key}", self.prefix));
            self.run::<Option<Vec<u8>>>("GET", cmd)
                .await
                .flatten()
                .map(Bytes::from)
        })
    }

    fn put<'a>(&'a self, key: &'a str, answer: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{}{key}", self.prefix))
                .arg(answer.as_ref())
                .arg("PX")
                .arg(self.ttl.as_millis().max(1) as u64);
            let _ = self.run::<()>("SET", cmd).await;
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
