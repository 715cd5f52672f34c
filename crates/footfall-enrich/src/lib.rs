//! Enrichment: what the processor derives from a logged event's raw fields — browser,
//! OS and device from the user agent (uap-core rules), bot detection (crawler patterns
//! and uap-core's `Spider` device), acquisition (source, referrer, channel, UTM tags,
//! ad click ids, from the referer-parser host list) and geo (a MaxMind-format database).
//!
//! It runs in the processor, never in the collector, so a reprocess with corrected rules
//! corrects history. Every function here is deterministic given the rules and the
//! configured geo database. The rule files are embedded at build time (see `build.rs`);
//! each set is compiled lazily on first use, so processes that never enrich pay nothing.

mod channel;
mod country_names;
mod geo;
pub mod names;
mod ua;

use std::path::Path;
use std::sync::OnceLock;

pub use channel::{attribution, Attribution, Medium, DIRECT, UTM_KEYS};
pub use geo::{Geo, GeoDb};
pub use ua::{bot_reason, parse_user_agent, warm_up as warm_up_user_agents, UaCache, UaInfo};

/// The rule set versions embedded in this build.
pub const RULES: &str =
    "uap-core (PyPI ua-parser-builtins 202610), crawler-user-agents 1.60.0, referer-parser 0.4.1";

/// Process-wide enrichment settings, set once at start-up (the geo database). Before
/// [`configure`] is called (tests, tools), there is no geo database and countries are
/// `unknown`.
pub struct Enricher {
    geo: Option<GeoDb>,
}

static GLOBAL: OnceLock<Enricher> = OnceLock::new();

/// Sets the geo database for this process. Fails if it cannot be opened, or if enrichment
/// was already configured differently.
pub fn configure(geo_path: Option<&Path>) -> Result<(), String> {
    let geo = match geo_path {
        Some(p) => Some(GeoDb::open(p)?),
        None => None,
    };
    GLOBAL
        .set(Enricher { geo })
        .map_err(|_| "enrichment was already configured".to_string())
}

/// The process's enricher.
pub fn global() -> &'static Enricher {
    GLOBAL.get_or_init(|| Enricher { geo: None })
}

impl Enricher {
    /// Country, region and city of a (truncated) client address; `unknown` parts when
    /// there is no database or no entry.
    pub fn geo(&self, ip_prefix: Option<&str>) -> Geo {
        match (&self.geo, ip_prefix) {
            (Some(db), Some(ip)) => db.lookup(ip),
            _ => Geo::unknown(),
        }
    }
}

/// Value of a dimension that the event did not carry.
pub const UNKNOWN: &str = "(unknown)";
