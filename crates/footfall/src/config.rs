//! Configuration: one serde tree, layered as built-in defaults < TOML file (`--config`)
//! < `FOOTFALL_<SECTION>__<KEY>` environment variables < command-line flags, then
//! validated. Unknown keys anywhere are an error.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub processor: ProcessorConfig,
    pub ingest: IngestConfig,
    pub archive: ArchiveConfig,
    pub enrich: EnrichConfig,
    pub tracker: TrackerConfig,
    pub meta: MetaConfig,
    pub store: StoreConfig,
    pub query: QueryConfig,
    pub columnar: ColumnarConfig,
    pub retention: RetentionConfig,
}

/// How long events are kept (docs/SECURITY.md, "Deleting data"): a property's events
/// older than its retention are deleted from the archive, the log, the rollups and the
/// columnar files, checked every `check_interval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Months every property keeps (0: forever).
    pub months: u32,
    /// Per property, over `months`: `[retention.properties]` `"FF-…" = 13`.
    pub properties: std::collections::HashMap<String, u32>,
    pub check_interval: String,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            months: 0,
            properties: Default::default(),
            check_interval: "1h".into(),
        }
    }
}

/// Raw events in columns (docs/QUERIES.md): the files the archiver role makes from the
/// archive and the engine query nodes answer from when the rollups cannot. Only in a
/// binary built with the `columnar` feature; elsewhere these settings do nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnarConfig {
    pub enabled: bool,
    /// How often the archiver role makes the days whose archive files changed.
    pub refresh_interval: String,
    /// One SQL statement's limits (`POST /api/v1/sql`, docs/SQL.md): time, memory its
    /// operators may hold, and rows answered.
    pub sql_timeout: String,
    pub sql_memory_mib: u64,
    pub sql_max_rows: usize,
    /// The PostgreSQL wire protocol (docs/SQL.md) on a query node: the address to
    /// listen on, empty for none (the default). The same time and memory limits apply
    /// to each statement; rows are streamed, so `sql_max_rows` does not.
    pub pg_listen: String,
    /// Open wire-protocol connections at once.
    pub pg_max_connections: usize,
    /// PEM certificate chain and key: TLS is offered when both are set.
    pub pg_tls_cert: String,
    pub pg_tls_key: String,
    /// Memory for resident tables (docs/QUERIES.md): a range's rows decoded once and
    /// kept, so that `/api/v2/query` and funnels scan memory instead of files. 0 sends
    /// every question to DataFusion.
    pub resident_mib: u64,
}

impl Default for ColumnarConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refresh_interval: "1m".into(),
            sql_timeout: "30s".into(),
            sql_memory_mib: 512,
            sql_max_rows: 100_000,
            pg_listen: String::new(),
            pg_max_connections: 64,
            pg_tls_cert: String::new(),
            pg_tls_key: String::new(),
            resident_mib: 4096,
        }
    }
}

/// The query API's answer cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `memory` (in this process), `redis` (shared by every query node; `redis_url`),
    /// or `off`.
    pub cache: String,
    /// How long an answer is kept. An answer served from the cache is at most this much
    /// older than a computed one: keep the sum with the pipeline's own delay within the
    /// freshness bound (docs/DISTRIBUTED.md).
    pub cache_ttl_ms: u64,
    /// `memory`: bytes of answers kept, in MiB.
    pub cache_mib: u64,
    /// `redis`: `redis://host:port[/db]`.
    pub redis_url: String,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            cache: "memory".into(),
            cache_ttl_ms: 1000,
            cache_mib: 64,
            redis_url: String::new(),
        }
    }
}

/// Where properties, keys and secrets live.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaConfig {
    /// Empty: SQLite in `<data_dir>/meta.db`. `postgres://user:password@host/db`: a
    /// PostgreSQL or YugabyteDB (YSQL) database shared by every node.
    pub url: String,
}

/// Where rollups and the processor's checkpoints live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Empty: files under `<data_dir>/rollups`. `postgres://…`: a PostgreSQL or
    /// YugabyteDB database shared by processors and query nodes.
    pub url: String,
    /// The embedded store: estimated memory for rollup days, in MiB; beyond it the
    /// oldest days are read from their files when asked for (docs/ARCHITECTURE.md,
    /// "Memory"). 0: no limit (the default until queries can read evicted days in
    /// part — at 100 M events a 1 GiB budget made the 30-day dashboard 1.9 s at p99).
    pub memory_mib: u64,
    /// Decoded days kept for reads: days read from files (embedded), day rows read
    /// from the database (query nodes), in MiB.
    pub read_cache_mib: u64,
    /// The embedded store: keep every day's hour buckets in memory. By default the
    /// hours of days older than the lateness window (three quarters of a day's bytes)
    /// are read from the day's file when an hour-grain query asks for them.
    pub cold_hours_in_memory: bool,
    /// Query nodes on a database: connections used for reads.
    pub read_connections: usize,
    /// Query nodes on a database: how long one look at the database answers later
    /// queries of the same property and dates without asking again (added to the
    /// checkpoint interval, it bounds how stale an answer can be).
    pub read_max_staleness_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            memory_mib: 0,
            read_cache_mib: 256,
            cold_hours_in_memory: false,
            read_connections: 4,
            read_max_staleness_ms: 250,
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let host_start = rest.find('@');
    match (host_start, rest[..host_start.unwrap_or(0)].find(':')) {
        (Some(at), Some(colon)) => format!(
            "{}{}:<redacted>{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

/// Enrichment in the processor (user agents, bots and channels need no settings: their
/// rules are built in).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// A MaxMind-format (`.mmdb`) country or city database; empty: countries `(unknown)`.
    pub geoip_path: String,
}

/// The browser tracker script.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Another path the script is served under besides `/footfall.js` (ad blockers block
    /// well-known names), e.g. `/assets/app-4f2a.js`.
    pub script_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Where archive files go: empty for `<data_dir>/archive`, `file:///abs/path`, or
    /// `s3://bucket/prefix` (any S3-compatible store).
    pub url: String,
    /// How often the log is sealed into archive files: `5m`, `30s`, `500ms`, …
    pub seal_interval: String,
    /// S3 options; the usual `AWS_*` environment variables apply too.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    /// Not printed by `footfall config`.
    pub s3_secret_access_key: String,
    /// Allow plain HTTP endpoints (local test servers).
    pub s3_allow_http: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            seal_interval: "5m".into(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_allow_http: false,
        }
    }
}

impl ArchiveConfig {
    /// object_store options for S3 URLs.
    pub fn s3_options(&self) -> Vec<(String, String)> {
        let mut o = Vec::new();
        let mut add = |k: &str, v: &str| {
            if !v.is_empty() {
                o.push((k.to_string(), v.to_string()));
            }
        };
        add("aws_endpoint", &self.s3_endpoint);
        add("aws_region", &self.s3_region);
        add("aws_access_key_id", &self.s3_access_key_id);
        add("aws_secret_access_key", &self.s3_secret_access_key);
        if self.s3_allow_http {
            o.push(("aws_allow_http".into(), "true".into()));
        }
        o
    }
}

/// Parses `250ms`, `5s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a duration like 5s or 5m"))?;
    Ok(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => bail!("`{s}`: unknown unit (use ms, s, m or h)"),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Seconds allowed for draining, flushing and checkpointing on SIGTERM/SIGINT.
    pub shutdown_timeout_secs: u64,
    /// Reverse proxies, as addresses or networks (`10.0.0.0/8`), whose
    /// `X-Forwarded-For` / `Forwarded` entries are believed: the client is the
    /// right-most entry that is not one of them. From any other peer the headers are
    /// ignored.
    pub trusted_proxies: Vec<String>,
    /// What this node runs: `all`, or any of `collector`, `processor`, `query`,
    /// `archiver` (`serve --role` overrides).
    pub roles: Vec<String>,
    /// Dashboard session cookies only over TLS. They are also whenever the gateway
    /// says the client came over TLS (`X-Forwarded-Proto: https`); set this when TLS
    /// ends elsewhere without saying so.
    pub secure_cookies: bool,
    /// How long a dashboard login lasts.
    pub session_hours: u64,
    /// Connections held open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Connections one client address may hold at once (0: no limit); one more is
    /// answered 429 and closed. Leave it 0 behind a gateway, where every connection comes
    /// from the gateway's address (limit clients there: nginx `limit_conn`).
    pub max_connections_per_client: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub partitions: u32,
    pub segment_bytes: u64,
    /// Segments older than this are deleted once processed.
    pub retention_hours: u64,
    /// Per partition; older processed segments beyond this size are deleted.
    pub retention_bytes: u64,
    /// Empty: the embedded log under `<data_dir>/log`. `host:port[,…]`: a Kafka-protocol
    /// broker (builds with the `kafka` feature); partitions are the topic's, and
    /// retention is the topic's own setting.
    pub kafka_brokers: String,
    pub kafka_topic: String,
    /// How long the producer waits to fill a batch (more: fewer, larger requests and
    /// that much more latency per acknowledgement).
    pub kafka_linger_ms: u64,
    /// Largest batch per partition request.
    pub kafka_batch_bytes: usize,
    /// `none`, `gzip`, `snappy` or `lz4`.
    pub kafka_compression: String,
    /// A record the broker has not acknowledged within this fails its request with 503.
    pub kafka_delivery_timeout_ms: u64,
    /// How long the broker may hold a consumer's fetch while it has nothing new.
    pub kafka_fetch_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    pub session_gap_minutes: u64,
    pub lateness_hours: u64,
    pub checkpoint_interval_ms: u64,
    /// Processors of a cluster (Kafka log, database store): how long a partition's
    /// lease lasts without renewal — the longest a killed processor's partitions wait
    /// before another takes them.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
    /// Browser (keyless) events older than this are refused.
    pub max_past_hours: u64,
    /// Timestamps further than this in the future are clamped to the receive time.
    pub max_future_seconds: u64,
    /// Events handed to the log and not yet stored, over all requests, in MiB; beyond
    /// it ingest answers 503 with `Retry-After` (a bound on the memory a flood takes).
    pub max_pending_mib: u64,
    /// Events per second each property may send to this node, with a burst above it
    /// (0: no limit); beyond it 429 with `Retry-After`.
    pub property_events_per_second: f64,
    pub property_burst: f64,
    /// Events per UTC day each property may send to this node (0: no limit).
    pub property_daily_quota: u64,
    /// Limits of particular properties, by tracking id (each field as above).
    pub property_limits: std::collections::BTreeMap<String, PropertyLimitConfig>,
}

/// One property's ingestion limits (`[ingest.property_limits."FF-…"]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PropertyLimitConfig {
    pub events_per_second: f64,
    pub burst: f64,
    pub daily_quota: u64,
}

impl Default for PropertyLimitConfig {
    fn default() -> Self {
        Self {
            events_per_second: 0.0,
            burst: 0.0,
            daily_quota: 0,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./footfall-data".into(),
            shutdown_timeout_secs: 10,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            roles: vec!["all".into()],
            secure_cookies: false,
            session_hours: 12,
            max_connections: 10_000,
            max_connections_per_client: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            // Each partition costs one fsync per group commit; two measured 398k events/s
            // batched against 475k for one and 270k for four (BENCHMARKS.md).
            partitions: 2,
            segment_bytes: 64 * 1024 * 1024,
            retention_hours: 168,
            retention_bytes: 8 * 1024 * 1024 * 1024,
            kafka_brokers: String::new(),
            kafka_topic: "footfall-events".into(),
            kafka_linger_ms: 0,
            kafka_batch_bytes: 1024 * 1024,
            kafka_compression: "lz4".into(),
            kafka_delivery_timeout_ms: 5000,
            kafka_fetch_wait_ms: 100,
        }
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            session_gap_minutes: 30,
            lateness_hours: 72,
            checkpoint_interval_ms: 5000,
            lease_ms: 10_000,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_events_per_request: 500,
            max_past_hours: 72,
            max_future_seconds: 60,
            max_pending_mib: 256,
            // No limit unless configured: a default would refuse a large merchant's
            // real traffic (docs/SECURITY.md says how to choose one).
            property_events_per_second: 0.0,
            property_burst: 0.0,
            property_daily_quota: 0,
            property_limits: Default::default(),
        }
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub roles: Option<Vec<String>>,
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Reads `FOOTFALL_SECTION__KEY=value` pairs into a TOML table. Values are parsed as
/// TOML scalars when they can be (numbers, booleans), else taken as strings.
fn env_layer(vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<toml::Value> {
    let mut root = toml::map::Map::new();
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix("FOOTFALL_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            // FOOTFALL_* variables without a section belong to other tools (tests).
            continue;
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|x| !x.is_table())
            .unwrap_or(toml::Value::String(v.clone()));
        let section = section.to_ascii_lowercase();
        let entry = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_ascii_lowercase(), value);
            }
            _ => bail!("environment variable {k}: `{section}` is not a section"),
        }
    }
    Ok(toml::Value::Table(root))
}

impl Config {
    pub fn load(file: Option<&std::path::Path>, flags: &Overrides) -> anyhow::Result<Self> {
        Self::load_from(file, std::env::vars(), flags)
    }

    pub fn load_from(
        file: Option<&std::path::Path>,
        env: impl Iterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> anyhow::Result<Self> {
        let mut v = toml::Value::try_from(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let t: toml::Value = toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?;
            merge(&mut v, t);
        }
        merge(&mut v, env_layer(env)?);
        let mut cfg: Config = v
            .try_into()
            .context("invalid configuration (file or FOOTFALL_* environment)")?;
        if let Some(l) = &flags.listen {
            cfg.server.listen = l.clone();
        }
        if let Some(d) = &flags.data_dir {
            cfg.server.data_dir = d.clone();
        }
        if let Some(r) = &flags.roles {
            cfg.server.roles = r.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        crate::roles::Roles::parse(&self.server.roles)?;
        parse_duration(&self.columnar.refresh_interval).context("columnar.refresh_interval")?;
        for (key, url) in [("meta.url", &self.meta.url), ("store.url", &self.store.url)] {
            if !url.is_empty()
                && !url.starts_with("postgres://")
                && !url.starts_with("postgresql://")
            {
                bail!("{key} must be empty (embedded) or a postgres:// URL");
            }
        }
        if !["none", "gzip", "snappy", "lz4"].contains(&self.log.kafka_compression.as_str()) {
            bail!("log.kafka_compression must be none, gzip, snappy or lz4");
        }
        if !(100..=120_000).contains(&self.log.kafka_delivery_timeout_ms) {
            bail!("log.kafka_delivery_timeout_ms must be between 100 and 120000");
        }
        match self.query.cache.as_str() {
            "memory" | "off" => {}
            "redis" if !self.query.redis_url.is_empty() => {}
            "redis" => bail!("query.cache = \"redis\" needs query.redis_url"),
            other => bail!("query.cache `{other}` must be memory, redis or off"),
        }
        if self.store.read_connections == 0 || self.store.read_connections > 64 {
            bail!("store.read_connections must be between 1 and 64");
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "server.listen `{}` is not an address:port",
                self.server.listen
            );
        }
        for p in &self.server.trusted_proxies {
            if footfall_server::parse_proxy(p).is_none() {
                bail!("server.trusted_proxies: `{p}` is neither an IP address nor a network (10.0.0.0/8)");
            }
        }
        if !(1..=1024).contains(&self.log.partitions) {
            bail!("log.partitions must be between 1 and 1024");
        }
        if self.log.segment_bytes < 1024 {
            bail!("log.segment_bytes must be at least 1024");
        }
        if self.processor.session_gap_minutes == 0 {
            bail!("processor.session_gap_minutes must be positive");
        }
        if self.processor.checkpoint_interval_ms < 100 {
            bail!("processor.checkpoint_interval_ms must be at least 100");
        }
        if !(1_000..=300_000).contains(&self.processor.lease_ms) {
            bail!("processor.lease_ms must be between 1000 and 300000");
        }
        if self.ingest.max_events_per_request == 0 || self.ingest.max_body_bytes < 1024 {
            bail!("ingest limits are too small");
        }
        let sp = &self.tracker.script_path;
        if !sp.is_empty() && (!sp.starts_with('/') || sp.starts_with("/api/") || sp.len() < 2) {
            bail!("tracker.script_path must be an absolute path such as /js/a.js, outside /api/");
        }
        let seal = parse_duration(&self.archive.seal_interval)
            .map_err(|e| anyhow::anyhow!("archive.seal_interval: {e}"))?;
        if seal < std::time::Duration::from_millis(100)
            || seal > std::time::Duration::from_secs(300)
        {
            bail!("archive.seal_interval must be between 100ms and 5m");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[log]\npartitions = 2\n",
        )
        .unwrap();
        let env = vec![
            ("FOOTFALL_LOG__PARTITIONS".to_string(), "3".to_string()),
            (
                "FOOTFALL_SERVER__DATA_DIR".to_string(),
                "/tmp/x".to_string(),
            ),
            ("FOOTFALL_TEST_UNRELATED".to_string(), "1".to_string()),
        ];
        let c =
            Config::load_from(Some(&f), env.clone().into_iter(), &Overrides::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.log.partitions, 3, "environment beats file");
        assert_eq!(c.server.data_dir, PathBuf::from("/tmp/x"));
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = Config::load_from(Some(&f), env.into_iter(), &flags).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9100", "flags beat environment");

        std::fs::write(&f, "[server]\nlisen = \"x\"\n").unwrap();
        let e = Config::load_from(Some(&f), std::iter::empty(), &Overrides::default()).unwrap_err();
        assert!(format!("{e:#}").contains("lisen"), "{e:#}");
        let e = Config::load_from(
            None,
            vec![("FOOTFALL_LOG__PARTITONS".to_string(), "2".to_string())].into_iter(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("partitons"), "{e:#}");
        let e = Config::load_from(
            None,
            vec![("FOOTFALL_STORE__URL".to_string(), "mysql://x".to_string())].into_iter(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("store.url"), "{e:#}");
    }

    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://ff:s3cret@db:5432/footfall"),
            "postgres://ff:<redacted>@db:5432/footfall"
        );
        assert_eq!(
            redact_url("postgres://db/footfall"),
            "postgres://db/footfall"
        );
        assert_eq!(redact_url("postgres://ff@db/x"), "postgres://ff@db/x");
    }
}
