//! Prometheus metrics of the server process.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub accepted: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub append_seconds: Histogram,
    pub query_seconds: Histogram,
    pub lag_bytes: Gauge<i64, AtomicI64>,
    pub lag_messages: Gauge<i64, AtomicI64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub processed: Gauge<i64, AtomicI64>,
    pub open_visits: Gauge<i64, AtomicI64>,
    pub log_bytes: Gauge<i64, AtomicI64>,
    pub checkpoint_bytes: Gauge<i64, AtomicI64>,
    pub partitions_owned: Gauge<i64, AtomicI64>,
    pub query_cache_hits: Counter,
    pub query_cache_misses: Counter,
    pub query_cache_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("footfall");
        let accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events made durable and acknowledged",
            accepted.clone(),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "events_rejected",
            "Events refused, by reason",
            rejected.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "log_append_seconds",
            "Time from append to durable",
            append_seconds.clone(),
        );
        let query_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "query_seconds",
            "Query execution time",
            query_seconds.clone(),
        );
        let lag_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "processor_lag_bytes",
            "Durable log bytes not yet processed (on the file log; 0 on Kafka)",
            lag_bytes.clone(),
        );
        let lag_messages = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "processor_lag_messages",
            "Broker messages not yet processed (on a Kafka log; 0 on the file log)",
            lag_messages.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "processor_lag_seconds",
            "Age of the newest processed event's receive time while behind; 0 when caught up",
            lag_seconds.clone(),
        );
        let processed = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "processor_events",
            "Events processed since start",
            processed.clone(),
        );
        let open_visits = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "processor_open_visits",
            "Visits held in processor state at the last checkpoint",
            open_visits.clone(),
        );
        let log_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "log_retained_bytes",
            "Bytes retained in the event log",
            log_bytes.clone(),
        );
        let checkpoint_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "checkpoint_bytes",
            "Size of the last rollup checkpoint",
            checkpoint_bytes.clone(),
        );
        let partitions_owned = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "processor_partitions_owned",
            "Log partitions this processor holds the lease of and processes (cluster mode)",
            partitions_owned.clone(),
        );
        let query_cache_hits = Counter::default();
        registry.register(
            "query_cache_hits",
            "Queries answered from the query cache",
            query_cache_hits.clone(),
        );
        let query_cache_misses = Counter::default();
        registry.register(
            "query_cache_misses",
            "Queries the query cache did not hold (computed, then stored)",
            query_cache_misses.clone(),
        );
        let query_cache_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "query_cache_lookup_seconds",
            "Time to look a query up in the query cache, hit or miss",
            query_cache_seconds.clone(),
        );
        Self {
            registry,
            accepted,
            rejected,
            append_seconds,
            query_seconds,
            lag_bytes,
            lag_messages,
            lag_seconds,
            processed,
            open_visits,
            log_bytes,
            checkpoint_bytes,
            partitions_owned,
            query_cache_hits,
            query_cache_misses,
            query_cache_seconds,
        }
    }
}

impl Metrics {
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}
