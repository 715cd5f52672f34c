//! The `footfall` binary: command line, configuration, and the one place that chooses
//! implementations for every seam (log, rollup store, metadata store, clock).

mod admin;
mod config;
mod export;
mod import;
mod loadgen;
mod roles;

// mimalloc: the processor and collector allocate many small strings per event; it
// measured markedly faster than the system allocator here (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use footfall_event::SystemClock;
use footfall_log::{EventLog, FileLog, FileLogOptions};
use footfall_meta::{MetaStore, Scope, SqliteMeta};
use footfall_processor::{
    Processor, ProcessorOptions, ProcessorStats, PropertySettings, SessionRules, SettingsResolver,
};
use footfall_server::{AppState, IngestRules, MetaCache, Metrics, ReadinessCheck};
use footfall_store::{RollupRead, RollupStore, SnapshotStore};

use config::{Config, Overrides};
use roles::Roles;

#[derive(Parser)]
#[command(
    name = "footfall",
    version,
    about = "Footfall: privacy-friendly web and app analytics"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (log, rollups, metadata).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role (collector, log, processor, query API) in one process, or the
    /// roles given.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
        /// `all` (the default), or any of collector, processor, query, archiver
        /// (comma-separated or repeated); see docs/DISTRIBUTED.md.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Print the effective configuration.
    Config,
    /// Manage properties (sites and apps).
    #[command(subcommand)]
    Property(PropertyCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage a property's goals (conversions; docs/METRICS.md, "Goals").
    #[command(subcommand)]
    Goal(GoalCmd),
    /// Send realistic synthetic traffic to a server.
    Loadgen(loadgen::LoadgenArgs),
    /// Rebuild derived data for a date range from the archive (on a running server).
    Reprocess(admin::ReprocessArgs),
    /// Inspect the raw archive.
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// Import historical data.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Export a property's raw events (CSV or Parquet) from a running server.
    Export(export::ExportArgs),
    /// Manage accounts (merchants) and the properties they own.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCmd),
    /// Delete a visitor's or a property's events everywhere they are kept (on a running
    /// server; docs/SECURITY.md, "Deleting data").
    Delete(admin::DeleteArgs),
    /// Repair damaged local files (the server must be stopped).
    #[command(subcommand)]
    Repair(RepairCmd),
    /// Inspect the event log (the embedded one or the Kafka topic the configuration names).
    #[command(subcommand)]
    Log(LogCmd),
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account and print its id.
    Create {
        #[arg(long)]
        name: String,
        /// A property the account owns (repeatable).
        #[arg(long = "property")]
        properties: Vec<String>,
    },
    /// Give a property to an account (taking it from any other).
    AddProperty { account: String, property: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user in an account. The password is read from FOOTFALL_PASSWORD, else
    /// from the first line of standard input.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        account: String,
        /// owner, admin or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Set a user's password (read as for `create`) and end their sessions.
    ResetPassword {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum LogCmd {
    /// Per partition: the offsets the log holds and how many events it holds (of one
    /// property, with --property), read from the start.
    Count(admin::LogCountArgs),
}

#[derive(Subcommand)]
enum RepairCmd {
    /// The embedded rollup store (checkpoint, state and day files): moves a damaged store
    /// aside; the next start rebuilds it from the archive and the log.
    Rollups(admin::RepairArgs),
}

#[derive(Subcommand)]
enum ImportCmd {
    /// Page views from a web server access log (sent to the running server).
    AccessLog(import::AccessLogArgs),
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Per hour: files, events, and whether the archive matches what the log acknowledged.
    Verify(admin::VerifyArgs),
}

#[derive(Subcommand)]
enum PropertyCmd {
    /// Create a property and print its tracking id.
    Create {
        #[arg(long)]
        name: String,
        /// IANA time zone, e.g. Asia/Kolkata.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Allowed domain for browser events (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change a property's name, time zone or domains.
    Update {
        tracking_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        timezone: Option<String>,
        /// Replaces the allowed domains (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Minutes without events after which a visit ends (default: server setting).
        #[arg(long)]
        session_gap_minutes: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List properties.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GoalCmd {
    /// Add a goal: a page (`--page`, with `*` and `**` wildcards) or a custom event
    /// (`--event`, optionally with `--prop key=value`, repeatable).
    Add {
        #[arg(long)]
        property: String,
        #[arg(long, conflicts_with = "event")]
        page: Option<String>,
        #[arg(long)]
        event: Option<String>,
        #[arg(long = "prop", requires = "event")]
        props: Vec<String>,
        /// Its `event:goal` name (default: `Visit <page>` or the event's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a property's goals.
    List {
        #[arg(long)]
        property: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a goal by name.
    Remove {
        #[arg(long)]
        property: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create an API key (shown once).
    Create(KeyCreate),
    /// List a property's keys (`*`: the admin keys): ids and scopes, never the keys.
    List {
        #[arg(long)]
        property: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (the first 10 characters, as `list` shows).
    Revoke {
        #[arg(long)]
        property: String,
        key_id: String,
    },
}

#[derive(Args)]
struct KeyCreate {
    /// The property (admin keys: omit, they cover all properties).
    #[arg(long, default_value = "*")]
    property: String,
    /// `write` for server-side ingestion, `read` for queries.
    #[arg(long)]
    scope: String,
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    footfall_processor::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let (listen, roles) = match &cli.command {
        Command::Serve { listen, roles } => {
            (listen.clone(), (!roles.is_empty()).then(|| roles.clone()))
        }
        _ => (None, None),
    };
    let overrides = Overrides {
        listen,
        data_dir: cli.data_dir.clone(),
        roles,
    };
    if let Command::Loadgen(args) = cli.command {
        return loadgen::run(args);
    }
    let cfg = Config::load(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Serve { .. } => serve(cfg),
        Command::Config => {
            let mut shown = cfg.clone();
            if !shown.archive.s3_secret_access_key.is_empty() {
                shown.archive.s3_secret_access_key = "<redacted>".into();
            }
            shown.meta.url = config::redact_url(&shown.meta.url);
            shown.store.url = config::redact_url(&shown.store.url);
            shown.query.redis_url = config::redact_url(&shown.query.redis_url);
            print!("{}", toml::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Reprocess(r) => admin::reprocess(&cfg, r),
        Command::Archive(ArchiveCmd::Verify(v)) => admin::verify(&cfg, v),
        Command::Log(LogCmd::Count(a)) => admin::log_count(&cfg, a),
        Command::Repair(RepairCmd::Rollups(a)) => admin::repair_rollups(&cfg, a),
        Command::Delete(a) => admin::delete(&cfg, a),
        Command::Account(a) => account_cmd(&cfg, a),
        Command::User(u) => user_cmd(&cfg, u),
        Command::Import(ImportCmd::AccessLog(a)) => import::access_log(&cfg, a),
        Command::Export(a) => export::export(a),
        Command::Property(p) => property_cmd(&cfg, p),
        Command::Goal(g) => goal_cmd(&cfg, g),
        Command::Key(KeyCmd::Create(k)) => key_cmd(&cfg, k),
        Command::Key(KeyCmd::List { property, json }) => {
            let keys = open_meta(&cfg)?.keys(&property)?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                for k in keys {
                    println!("{}\t{}\t{}", k.key_id, k.scope.as_str(), k.created_at);
                }
            }
            Ok(())
        }
        Command::Key(KeyCmd::Revoke { property, key_id }) => {
            if !open_meta(&cfg)?.revoke_key(&property, &key_id)? {
                bail!("property {property} has no key {key_id}");
            }
            Ok(())
        }
        Command::Loadgen(_) => unreachable!(),
    }
}

fn open_meta(cfg: &Config) -> anyhow::Result<Arc<dyn MetaStore>> {
    Ok(open_metadata(cfg)?.0)
}

/// The metadata store: properties and keys, and (the same database) accounts, users
/// and sessions.
fn open_metadata(
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn MetaStore>, Arc<dyn footfall_meta::AccountStore>)> {
    if !cfg.meta.url.is_empty() {
        let m = Arc::new(footfall_pg::PgMeta::open(&cfg.meta.url).context("opening meta.url")?);
        return Ok((m.clone(), m));
    }
    std::fs::create_dir_all(&cfg.server.data_dir)
        .with_context(|| format!("creating {}", cfg.server.data_dir.display()))?;
    let m = Arc::new(SqliteMeta::open(cfg.server.data_dir.join("meta.db"))?);
    Ok((m.clone(), m))
}

fn account_cmd(cfg: &Config, cmd: AccountCmd) -> anyhow::Result<()> {
    let (_, accounts) = open_metadata(cfg)?;
    match cmd {
        AccountCmd::Create { name, properties } => {
            let a = accounts.create_account(&name)?;
            for p in properties {
                accounts.assign_property(&a.id, &p)?;
            }
            println!("{}", a.id);
        }
        AccountCmd::AddProperty { account, property } => {
            accounts.assign_property(&account, &property)?;
        }
    }
    Ok(())
}

/// A password from FOOTFALL_PASSWORD, else the first line of standard input (never an
/// argument: arguments are visible to every user of the machine).
fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("FOOTFALL_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn user_cmd(cfg: &Config, cmd: UserCmd) -> anyhow::Result<()> {
    let (_, accounts) = open_metadata(cfg)?;
    let auth = footfall_auth::Auth::new(accounts.clone(), Default::default());
    match cmd {
        UserCmd::Create {
            email,
            account,
            role,
        } => {
            let role = footfall_meta::Role::parse(&role)?;
            let u = auth.create_user(&email, &read_password()?, &account, role)?;
            println!("{}", u.id);
        }
        UserCmd::ResetPassword { email } => {
            let (u, _) = accounts
                .user_by_email(&email)?
                .ok_or_else(|| anyhow::anyhow!("no user has address {email}"))?;
            auth.set_password(&u, &read_password()?)?;
        }
    }
    Ok(())
}

fn print_property(p: &footfall_meta::Property, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(p)?);
    } else {
        println!("{}", p.tracking_id);
    }
    Ok(())
}

fn property_cmd(cfg: &Config, cmd: PropertyCmd) -> anyhow::Result<()> {
    let meta = open_meta(cfg)?;
    match cmd {
        PropertyCmd::Create {
            name,
            timezone,
            domains,
            json,
        } => print_property(&meta.create_property(&name, &timezone, &domains)?, json),
        PropertyCmd::Update {
            tracking_id,
            name,
            timezone,
            domains,
            session_gap_minutes,
            json,
        } => {
            let changes = footfall_meta::PropertyChanges {
                name: name.as_deref(),
                timezone: timezone.as_deref(),
                domains: (!domains.is_empty()).then_some(domains.as_slice()),
                session_gap_minutes,
                goals: None,
            };
            print_property(&meta.update_property(&tracking_id, changes)?, json)
        }
        PropertyCmd::List { json } => {
            let ps = meta.properties()?;
            if json {
                println!("{}", serde_json::to_string(&ps)?);
            } else {
                for p in ps {
                    println!(
                        "{}\t{}\t{}\t{}",
                        p.tracking_id,
                        p.timezone,
                        p.name,
                        p.domains.join(",")
                    );
                }
            }
            Ok(())
        }
    }
}

fn goal_cmd(cfg: &Config, cmd: GoalCmd) -> anyhow::Result<()> {
    let meta = open_meta(cfg)?;
    let property = match &cmd {
        GoalCmd::Add { property, .. }
        | GoalCmd::List { property, .. }
        | GoalCmd::Remove { property, .. } => property.clone(),
    };
    let p = meta
        .property(&property)?
        .ok_or_else(|| anyhow::anyhow!("no property has tracking id {property}"))?;
    let mut goals = p.goals;
    match cmd {
        GoalCmd::List { json, .. } => {
            if json {
                println!("{}", serde_json::to_string(&goals)?);
            } else {
                for g in goals {
                    let what = match (&g.page, &g.event) {
                        (Some(page), _) => format!("page {page}"),
                        (_, Some(e)) => format!("event {e}"),
                        _ => String::new(),
                    };
                    let props: Vec<String> =
                        g.props.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("{}\t{what}\t{}", g.name, props.join(","));
                }
            }
            return Ok(());
        }
        GoalCmd::Add {
            page,
            event,
            props,
            name,
            ..
        } => {
            let mut g = match (page, event) {
                (Some(page), None) => footfall_meta::Goal::page(&page),
                (None, Some(e)) => {
                    let props = props
                        .iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .ok_or_else(|| {
                                    anyhow::anyhow!("--prop takes key=value, not `{kv}`")
                                })
                        })
                        .collect::<anyhow::Result<_>>()?;
                    footfall_meta::Goal::event(&e, props)
                }
                _ => bail!("a goal needs --page or --event"),
            };
            if let Some(n) = name {
                g.name = n;
            }
            goals.push(g);
        }
        GoalCmd::Remove { name, .. } => {
            let before = goals.len();
            goals.retain(|g| g.name != name);
            if goals.len() == before {
                bail!("property {property} has no goal named `{name}`");
            }
        }
    }
    let p = meta.update_property(
        &property,
        footfall_meta::PropertyChanges {
            goals: Some(&goals),
            ..Default::default()
        },
    )?;
    for g in p.goals {
        println!("{}", g.name);
    }
    Ok(())
}

fn key_cmd(cfg: &Config, k: KeyCreate) -> anyhow::Result<()> {
    let meta = open_meta(cfg)?;
    let Some(scope) = Scope::parse(&k.scope) else {
        bail!("--scope must be `read`, `write` or `admin`");
    };
    let (key, grant) = meta.create_key(&k.property, scope)?;
    if k.json {
        println!(
            "{}",
            serde_json::json!({"key": key, "key_id": grant.key_id, "property": grant.property, "scope": grant.scope})
        );
    } else {
        println!("{key}");
    }
    Ok(())
}

/// The rollup store a processor writes: files in the data directory, or the shared
/// database.
fn open_writer_store(cfg: &Config) -> anyhow::Result<Arc<dyn RollupStore>> {
    if cfg.store.url.is_empty() {
        let budget = footfall_store::MemoryBudget {
            resident_bytes: match cfg.store.memory_mib {
                0 => u64::MAX,
                mib => mib << 20,
            },
            // Late events reach back the lateness bound: those days stay in memory.
            keep_newest_days: (cfg.processor.lateness_hours / 24 + 2) as u32,
            read_cache_bytes: cfg.store.read_cache_mib << 20,
            cold_hours_on_disk: !cfg.store.cold_hours_in_memory,
        };
        let dir = cfg.server.data_dir.join("rollups");
        let store = SnapshotStore::open_with(&dir, budget).map_err(|e| {
            anyhow::anyhow!(
                "the rollup store in {} cannot be opened: {e}\n\
                 Repair: stop every footfall process on this data directory and run \
                 `footfall repair rollups`. It moves the damaged store aside; the next start \
                 rebuilds the rollups from the archive and the log.",
                dir.display()
            )
        })?;
        Ok(Arc::new(store))
    } else {
        Ok(Arc::new(
            footfall_pg::PgRollupStore::open_writer(
                &cfg.store.url,
                footfall_pg::ALL_PARTITIONS_PART,
                None,
            )
            .context("opening the rollup store (store.url)")?,
        ))
    }
}

/// The log a node appends to or reads; the embedded file log also by its own type, as
/// the wiring closes it on shutdown and applies retention to it.
type Logs = (Option<Arc<FileLog>>, Arc<dyn EventLog>);

/// The event log: the embedded file log, or a Kafka-protocol broker.
fn open_log(cfg: &Config) -> anyhow::Result<Logs> {
    if cfg.log.kafka_brokers.is_empty() {
        let f = Arc::new(FileLog::open(
            cfg.server.data_dir.join("log"),
            FileLogOptions {
                partitions: cfg.log.partitions,
                segment_bytes: cfg.log.segment_bytes,
                ..Default::default()
            },
        )?);
        return Ok((Some(f.clone()), f));
    }
    open_kafka(cfg).map(|l| (None, l))
}

#[cfg(feature = "kafka")]
fn open_kafka(cfg: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    let log = footfall_kafka::KafkaLog::open(footfall_kafka::KafkaOptions {
        brokers: cfg.log.kafka_brokers.clone(),
        topic: cfg.log.kafka_topic.clone(),
        linger: Duration::from_millis(cfg.log.kafka_linger_ms),
        batch_bytes: cfg.log.kafka_batch_bytes,
        compression: cfg.log.kafka_compression.clone(),
        delivery_timeout: Duration::from_millis(cfg.log.kafka_delivery_timeout_ms),
        fetch_wait: Duration::from_millis(cfg.log.kafka_fetch_wait_ms),
        extra: Vec::new(),
    })
    .with_context(|| format!("opening the Kafka log on {}", cfg.log.kafka_brokers))?;
    Ok(Arc::new(log))
}

#[cfg(not(feature = "kafka"))]
fn open_kafka(_: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    bail!("log.kafka_brokers is set, but this footfall was built without Kafka support (cargo build --features kafka)")
}

/// The processor role on a shared log: one processor per partition this node holds the
/// lease of, each writing its own rollup part (footfall_processor::cluster).
fn start_partition_processors(
    cfg: &Config,
    log: Arc<dyn EventLog>,
    settings: SettingsResolver,
    rules: SessionRules,
    stop: Arc<AtomicBool>,
    readiness: &mut Vec<ReadinessCheck>,
    metrics: &Metrics,
) -> anyhow::Result<(
    std::thread::JoinHandle<()>,
    Arc<footfall_processor::cluster::Board>,
)> {
    use footfall_processor::cluster;
    let leases = Arc::new(
        footfall_pg::PgLeases::open(&cfg.store.url)
            .context("opening partition leases (store.url)")?,
    );
    {
        let l = leases.clone();
        readiness.push(ReadinessCheck {
            name: "partition leases database",
            check: Arc::new(move || footfall_store::leases::Leases::holders(l.as_ref()).is_ok()),
        });
    }
    let me = format!(
        "{}-{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "processor".into()),
        std::process::id(),
        rand::random::<u32>()
    );
    let url = cfg.store.url.clone();
    let opts = ProcessorOptions {
        rules,
        checkpoint_interval: Duration::from_millis(cfg.processor.checkpoint_interval_ms),
        drain_on_stop: false,
        ..Default::default()
    };
    let partitions = log.partitions();
    let ttl = Duration::from_millis(cfg.processor.lease_ms);
    let owner = me.clone();
    let board = Arc::new(cluster::Board::default());
    let on_board = board.clone();
    let start = move |p: u32| -> std::io::Result<cluster::Running> {
        let store = footfall_pg::PgRollupStore::open_writer(&url, p as i32, Some(owner.clone()))
            .map_err(std::io::Error::other)?;
        let stats = Arc::new(ProcessorStats::new(1));
        let processor = Processor::new(
            Arc::new(footfall_log::OnePartition::new(log.clone(), p)),
            Arc::new(store),
            settings.clone(),
            opts.clone(),
            stats.clone(),
        )
        .map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("processor-p{p}"))
            .spawn(move || {
                if let Err(e) = processor.run(s) {
                    tracing::error!(partition = p, error = %e, "partition processor failed");
                }
            })?;
        // On the board once running: a processor that never started is not reported.
        on_board.track(p, stats, stop.clone());
        Ok(cluster::Running { stop, thread })
    };
    tracing::info!(owner = %me, partitions, "processing partitions by lease");
    let gauge = metrics.partitions_owned.clone();
    let owned = move |n: usize| {
        gauge.set(n as i64);
    };
    let thread = std::thread::Builder::new()
        .name("partition-coordinator".into())
        .spawn(move || cluster::run(leases, partitions, me, ttl, stop, start, owned))?;
    Ok((thread, board))
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FOOTFALL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let roles = Roles::parse(&cfg.server.roles)?;
    let shared_store = !cfg.store.url.is_empty();
    roles.check(!cfg.log.kafka_brokers.is_empty(), shared_store)?;
    let data = cfg.server.data_dir.clone();
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if roles.processor {
        let geo =
            (!cfg.enrich.geoip_path.is_empty()).then(|| PathBuf::from(&cfg.enrich.geoip_path));
        footfall_enrich::configure(geo.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    }

    // The one place implementations are chosen.
    let (meta, accounts) = open_metadata(&cfg)?;
    let clock = Arc::new(SystemClock);
    let cache = Arc::new(MetaCache::new(meta.clone())?);
    let mut readiness: Vec<ReadinessCheck> = Vec::new();
    if !cfg.meta.url.is_empty() {
        let m = meta.clone();
        readiness.push(ReadinessCheck {
            name: "metadata database",
            check: Arc::new(move || m.change_counter().is_ok()),
        });
    }

    let (file_log, log) = if roles.uses_log() {
        let (f, l) = open_log(&cfg)?;
        (f, Some(l))
    } else {
        (None, None)
    };

    // On a shared log, each partition has its own processor and rollup part, owned by
    // whichever processor holds its lease; on the embedded log, one processor owns all.
    let partitioned = roles.processor && !cfg.log.kafka_brokers.is_empty();
    let writer_store = if roles.processor && !partitioned {
        Some(open_writer_store(&cfg)?)
    } else {
        None
    };
    // A query role beside the processor reads the processor's rollups (fresh at once);
    // otherwise it reads the shared database through its cache.
    let read_store: Option<Arc<dyn RollupRead>> = match (&writer_store, roles.query) {
        (_, false) => None,
        (Some(w), true) => Some(w.clone()),
        (None, true) => {
            let r = Arc::new(
                footfall_pg::PgRollupStore::open_reader(
                    &cfg.store.url,
                    footfall_pg::ReadCacheOptions {
                        max_bytes: cfg.store.read_cache_mib << 20,
                        connections: cfg.store.read_connections,
                        max_staleness: Duration::from_millis(cfg.store.read_max_staleness_ms),
                    },
                )
                .context("opening the rollup store (store.url)")?,
            );
            let ping = r.clone();
            readiness.push(ReadinessCheck {
                name: "rollup database",
                check: Arc::new(move || ping.ping().is_ok()),
            });
            Some(r)
        }
    };

    let settings_cache = cache.clone();
    let settings: SettingsResolver = Arc::new(move |id: &str| {
        let p = settings_cache.property(id).ok().flatten();
        PropertySettings {
            tz: p.as_ref().map(|p| p.tz()).unwrap_or(chrono_tz::UTC),
            gap_ms: p
                .and_then(|p| p.session_gap_minutes)
                .map(|m| m as i64 * 60_000),
        }
    });
    let session_rules = SessionRules {
        gap_ms: cfg.processor.session_gap_minutes as i64 * 60_000,
        lateness_ms: cfg.processor.lateness_hours as i64 * 3_600_000,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut processor_thread = None;
    let mut processor_stats = None;
    let mut install_tx = None;
    if let (Some(store), Some(log)) = (&writer_store, &log) {
        let stats = Arc::new(ProcessorStats::new(log.partitions()));
        let mut processor = Processor::new(
            log.clone(),
            store.clone(),
            settings.clone(),
            ProcessorOptions {
                rules: session_rules,
                checkpoint_interval: Duration::from_millis(cfg.processor.checkpoint_interval_ms),
                ..Default::default()
            },
            stats.clone(),
        )?;
        let (tx, rx) = std::sync::mpsc::channel();
        processor.set_install_channel(rx);
        install_tx = Some(tx);
        let stop = stop.clone();
        processor_thread = Some(
            std::thread::Builder::new()
                .name("footfall-processor".into())
                .spawn(move || {
                    // Crash-only: a supervisor restarts us and we resume from the
                    // checkpoint — after an error, and after a panic (a rollup day that
                    // cannot be read back) too, rather than serve without processing.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        processor.run(stop)
                    })) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "processor failed; exiting");
                            std::process::exit(1);
                        }
                        Err(_) => {
                            tracing::error!("processor panicked; exiting");
                            std::process::exit(1);
                        }
                    }
                })?,
        );
        processor_stats = Some((stats, log.clone()));
    }

    let metrics = Arc::new(Metrics::default());
    let mut coordinator = None;
    // What /metrics reports of the processing here.
    let mut progress: Option<(Arc<dyn footfall_processor::Progress>, Arc<dyn EventLog>)> =
        processor_stats
            .clone()
            .map(|(s, l)| (s as Arc<dyn footfall_processor::Progress>, l));
    if let (true, Some(log)) = (partitioned, &log) {
        let (thread, board) = start_partition_processors(
            &cfg,
            log.clone(),
            settings.clone(),
            session_rules,
            stop.clone(),
            &mut readiness,
            &metrics,
        )?;
        coordinator = Some(thread);
        progress = Some((board, log.clone()));
    }

    let (seal_tx, seal_rx) =
        tokio::sync::mpsc::channel::<footfall_server::reprocess::SealRequest>(16);
    let mut archiver = None;
    let mut archive = None;
    if let (true, Some(log)) = (roles.archiver, &log) {
        let a = admin::open_archive(&cfg)?;
        archiver = Some(footfall_archive::Archiver::open_at(
            a.clone(),
            log.clone(),
            admin::archiver_position(&cfg, true)?,
        )?);
        archive = Some(a);
    }
    let archived = Arc::new(std::sync::Mutex::new(
        archiver.as_ref().map(|a| a.offsets()).unwrap_or_default(),
    ));
    // Reprocessing rebuilds in this process and hands the range to its processor.
    let reprocessor = match (&archive, install_tx, &writer_store, &log) {
        (Some(archive), Some(install_tx), Some(store), Some(log)) => {
            let meta = meta.clone();
            Some(Arc::new(footfall_server::reprocess::Reprocessor::new(
                archive.clone(),
                seal_tx,
                install_tx,
                settings.clone(),
                store.clone(),
                log.partitions() as usize,
                session_rules,
                Arc::new(move || {
                    meta.properties()
                        .map(|ps| ps.into_iter().map(|p| p.tracking_id).collect())
                        .unwrap_or_default()
                }),
            )))
        }
        _ => None,
    };

    // Deleting data (a visitor's, a property's, past its retention) rewrites the
    // archive and rebuilds from it: it lives beside reprocessing.
    let eraser = reprocessor.as_ref().map(|r| {
        Arc::new(footfall_server::privacy::Eraser::new(
            r.clone(),
            log.clone(),
        ))
    });

    // Raw events in columns: the archiver role makes the files, query nodes answer
    // from them what the rollups cannot.
    let (events, columnar_refresh) = columnar(
        &cfg,
        &roles,
        &cache,
        &session_rules,
        reprocessor.as_ref(),
        eraser.as_ref(),
    )?;

    let mut rules = IngestRules::default();
    rules.limits.max_body_bytes = cfg.ingest.max_body_bytes;
    rules.limits.max_events = cfg.ingest.max_events_per_request;
    rules.max_past_ms = cfg.ingest.max_past_hours as i64 * 3_600_000;
    rules.max_future_ms = cfg.ingest.max_future_seconds as i64 * 1000;
    rules.trusted_proxies = cfg
        .server
        .trusted_proxies
        .iter()
        .filter_map(|p| footfall_server::parse_proxy(p))
        .collect();
    rules.property_limits = Arc::new(footfall_server::PropertyLimits::new(
        footfall_server::Limit {
            events_per_second: cfg.ingest.property_events_per_second,
            burst: cfg.ingest.property_burst,
            daily_quota: cfg.ingest.property_daily_quota,
        },
        cfg.ingest
            .property_limits
            .iter()
            .map(|(id, l)| {
                let limit = footfall_server::Limit {
                    events_per_second: l.events_per_second,
                    burst: l.burst,
                    daily_quota: l.daily_quota,
                };
                (id.clone(), limit)
            })
            .collect(),
    ));
    let state = Arc::new(AppState {
        log: if roles.collector { log.clone() } else { None },
        store: read_store,
        cache: cache.clone(),
        clock,
        metrics,
        processor: progress,
        readiness,
        rules,
        accepting: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        message_ids: footfall_server::protocols::MessageIds::new(1_000_000),
        tracker_path: cfg.tracker.script_path.clone(),
        reprocessor,
        eraser: eraser.clone(),
        events,
        sql_limits: footfall_query::SqlLimits {
            timeout: config::parse_duration(&cfg.columnar.sql_timeout)?,
            memory_bytes: (cfg.columnar.sql_memory_mib.max(1) << 20) as usize,
            max_rows: cfg.columnar.sql_max_rows.max(1),
        },
        query_cache: if roles.query {
            query_cache(&cfg)?
        } else {
            None
        },
        auth: roles.query.then(|| {
            Arc::new(footfall_auth::Auth::new(
                accounts.clone(),
                footfall_auth::AuthOptions {
                    session_ttl: Duration::from_secs(cfg.server.session_hours * 3600),
                    ..Default::default()
                },
            ))
        }),
        secure_cookies: cfg.server.secure_cookies,
        pending: Arc::new(tokio::sync::Semaphore::new(
            (cfg.ingest.max_pending_mib.max(1) << 20).min(u32::MAX as u64) as usize,
        )),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown_timeout = Duration::from_secs(cfg.server.shutdown_timeout_secs);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .with_context(|| format!("binding {}", cfg.server.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %data.display(), roles = ?roles.names(), "footfall serving");
        println!("footfall listening on http://{addr}");

        // Metadata changes made by other processes (the CLI) reach the caches.
        let refresh_cache = cache.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                let c = refresh_cache.clone();
                let _ = tokio::task::spawn_blocking(move || c.refresh()).await;
            }
        });
        if let Some(refresh) = columnar_refresh {
            tokio::spawn(refresh);
        }
        // Each property's retention: its events older than that are deleted.
        if let Some(e) = &eraser {
            let policy = footfall_server::privacy::RetentionPolicy {
                default_months: cfg.retention.months,
                by_property: cfg.retention.properties.clone(),
            };
            if policy.default_months > 0 || policy.by_property.values().any(|m| *m > 0) {
                let interval = config::parse_duration(&cfg.retention.check_interval)?;
                tokio::spawn(e.clone().retention_loop(policy, interval));
            }
        }
        // After `footfall repair rollups`: the fresh store is rebuilt from the archive.
        let marker = admin::rebuild_marker(&cfg);
        if let (true, Some(r)) = (marker.exists(), &state.reprocessor) {
            let r = r.clone();
            tokio::spawn(async move { r.rebuild_after_repair(marker).await });
        }
        if let Some(archiver) = archiver {
            let seal_interval = config::parse_duration(&cfg.archive.seal_interval)?;
            tokio::spawn(footfall_archive::seal_loop(
                archiver,
                seal_interval,
                seal_rx,
                archived.clone(),
            ));
        }
        // Retention: only segments both the processor has checkpointed past and the
        // archiver has sealed are removed.
        if let (Some(log), Some((stats, _))) = (&file_log, &processor_stats) {
            let (ret_log, ret_stats, ret_archived) = (log.clone(), stats.clone(), archived.clone());
            let (max_age, max_bytes) = (
                Duration::from_secs(cfg.log.retention_hours * 3600),
                cfg.log.retention_bytes,
            );
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_secs(60));
                loop {
                    t.tick().await;
                    let safe = footfall_log::safe_to_delete(&[
                        ret_stats.checkpointed_offsets(),
                        ret_archived.lock().unwrap().clone(),
                    ]);
                    if let Err(e) = ret_log.enforce_retention(&safe, max_age, max_bytes) {
                        tracing::warn!(error = %e, "log retention failed");
                    }
                }
            });
        }

        let app = footfall_server::app(state.clone());
        let shutdown_state = state.clone();
        // Beacons are answered by the server's own HTTP/1.1 loop; every other request
        // by hyper and the router (see footfall_server::fast).
        let limits = footfall_server::fast::ConnectionLimits {
            max: cfg.server.max_connections,
            per_client: cfg.server.max_connections_per_client,
        };
        let server = footfall_server::fast::serve(listener, state.clone(), app, limits, async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: draining");
            // Not ready from now on; requests still arriving on open connections are
            // answered (footfall_server::fast::serve) until the connections close.
            shutdown_state.draining.store(true, Ordering::SeqCst);
        });
        // Bound the drain so shutdown finishes inside the timeout.
        let deadline = shutdown_timeout.mul_f32(0.6);
        tokio::select! {
            r = server => r?,
            _ = async {
                while !state.draining.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(deadline).await;
            } => tracing::warn!("drain took too long; closing remaining connections"),
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));

    // Every acknowledged event is already durable in the log; the processor drains what
    // it has not seen and checkpoints, so a restart has nothing to replay.
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = processor_thread {
        t.join()
            .map_err(|_| anyhow::anyhow!("processor thread panicked"))?;
    }
    if let Some(t) = coordinator {
        t.join()
            .map_err(|_| anyhow::anyhow!("partition coordinator panicked"))?;
    }
    if let Some(l) = file_log {
        l.close();
    }
    tracing::info!("footfall stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The query API's answer cache, as configured (`[query]`).
fn query_cache(cfg: &Config) -> anyhow::Result<Option<Arc<dyn footfall_cache::ResultCache>>> {
    let ttl = Duration::from_millis(cfg.query.cache_ttl_ms);
    if ttl.is_zero() {
        return Ok(None);
    }
    Ok(match cfg.query.cache.as_str() {
        "memory" => Some(Arc::new(footfall_cache::MemoryCache::new(
            ttl,
            cfg.query.cache_mib << 20,
        ))),
        "redis" => Some(Arc::new(
            footfall_cache::RedisCache::new(&cfg.query.redis_url, ttl, "footfall:q:")
                .map_err(|e| anyhow::anyhow!("query.redis_url: {e}"))?,
        )),
        _ => None,
    })
}

/// The columnar engine of a query node (None without one), and on an archiver node the
/// loop that makes the files (to be spawned on the runtime).
type Columnar = (
    Option<Arc<dyn footfall_query::EventQuery>>,
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
);

#[cfg(feature = "columnar")]
fn columnar(
    cfg: &config::Config,
    roles: &roles::Roles,
    cache: &Arc<MetaCache>,
    rules: &SessionRules,
    reprocessor: Option<&Arc<footfall_server::reprocess::Reprocessor>>,
    eraser: Option<&Arc<footfall_server::privacy::Eraser>>,
) -> anyhow::Result<Columnar> {
    if !cfg.columnar.enabled || !(roles.query || roles.archiver) {
        return Ok((None, None));
    }
    let columns = Arc::new(footfall_columnar::Columns::new(admin::open_archive(cfg)?));
    // A reprocessed range's days are made again at the next refresh (a fix of the
    // rules reaches the columnar files too).
    if let Some(r) = reprocessor {
        let c = columns.clone();
        let _ = r.rebuilt.set(Arc::new(move |property, from, to| {
            let c = c.clone();
            Box::pin(async move {
                c.invalidate(&property, from, to)
                    .await
                    .map_err(|e| e.to_string())
            })
        }));
    }
    // Deleted events leave the columnar files too.
    if let Some(e) = eraser {
        let c = columns.clone();
        let _ = e.forget_columns.set(Arc::new(move |property, from, to| {
            let c = c.clone();
            Box::pin(async move {
                c.forget(&property, from, to)
                    .await
                    .map_err(|e| e.to_string())
            })
        }));
    }
    let mut refresh = None;
    if roles.archiver {
        let interval = config::parse_duration(&cfg.columnar.refresh_interval)?;
        let (cache, default_gap) = (cache.clone(), rules.gap_ms);
        let settings = Arc::new(move |id: &str| {
            let p = cache.property(id).ok().flatten()?;
            let gap = p
                .session_gap_minutes
                .map_or(default_gap, |m| m as i64 * 60_000);
            Some((p.tz(), gap))
        });
        refresh = Some(Box::pin(footfall_columnar::refresh_loop(
            columns.clone(),
            interval,
            settings,
        ))
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);
    }
    let engine = roles.query.then(|| {
        Arc::new(
            footfall_columnar::ColumnarEngine::new(columns)
                .with_resident_budget((cfg.columnar.resident_mib << 20) as usize),
        )
    });
    if let (Some(engine), false) = (&engine, cfg.columnar.pg_listen.is_empty()) {
        let tls = match (&cfg.columnar.pg_tls_cert[..], &cfg.columnar.pg_tls_key[..]) {
            ("", "") => None,
            ("", _) | (_, "") => anyhow::bail!("columnar.pg_tls_cert and pg_tls_key go together"),
            (c, k) => Some((c.to_string(), k.to_string())),
        };
        let options = footfall_pgwire::WireOptions {
            timeout: config::parse_duration(&cfg.columnar.sql_timeout)?,
            memory_bytes: (cfg.columnar.sql_memory_mib.max(1) << 20) as usize,
            max_connections: cfg.columnar.pg_max_connections.max(1),
            tls,
        };
        let addr = footfall_pgwire::spawn(
            &cfg.columnar.pg_listen,
            engine.clone(),
            Arc::new(ReadKeys(cache.clone())),
            options,
        )
        .with_context(|| format!("columnar.pg_listen {}", cfg.columnar.pg_listen))?;
        tracing::info!(%addr, "PostgreSQL wire protocol listening");
    }
    let engine = engine.map(|e| e as Arc<dyn footfall_query::EventQuery>);
    Ok((engine, refresh))
}

/// Wire-protocol logins: the password is a read key of the property named as the
/// database.
#[cfg(feature = "columnar")]
struct ReadKeys(Arc<MetaCache>);

#[cfg(feature = "columnar")]
impl footfall_pgwire::WireAuth for ReadKeys {
    fn authorise(&self, database: &str, password: &str) -> Result<(), String> {
        let denied = || {
            format!("password authentication failed: not a read key of the property {database:?} (the database is the tracking id, the password one of its read keys)")
        };
        let grant = self
            .0
            .key(password)
            .map_err(|e| format!("keys unavailable: {e}"))?
            .ok_or_else(denied)?;
        if grant.scope != footfall_meta::Scope::Read || grant.property != database {
            return Err(denied());
        }
        Ok(())
    }
}

#[cfg(not(feature = "columnar"))]
fn columnar(
    cfg: &config::Config,
    roles: &roles::Roles,
    _: &Arc<MetaCache>,
    _: &SessionRules,
    _: Option<&Arc<footfall_server::reprocess::Reprocessor>>,
    _: Option<&Arc<footfall_server::privacy::Eraser>>,
) -> anyhow::Result<Columnar> {
    if cfg.columnar.enabled && roles.query {
        tracing::info!("this binary is built without the `columnar` feature: queries the rollups cannot answer get a 400");
    }
    if !cfg.columnar.pg_listen.is_empty() {
        anyhow::bail!("columnar.pg_listen needs a binary built with the `columnar` feature");
    }
    Ok((None, None))
}
