//! Application metadata: properties (merchant sites and apps), API keys, the
//! installation secret and the daily visitor salts.
//!
//! [`MetaStore`] is the contract; [`SqliteMeta`] the embedded implementation (one SQLite
//! file in the data directory, WAL mode, so the CLI can change it while `serve` runs).
//! The SQL is kept portable to PostgreSQL/YugabyteDB for the distributed implementation.
//! This crate never stores an API key in clear: only its SHA-256.

pub mod accounts;
pub mod cache;
pub mod contract;
mod sqlite_accounts;

pub use accounts::{Account, AccountStore, Invite, Role, Session, ShareLink, User};
pub use cache::MetaCache;

use std::path::Path;
use std::sync::Mutex;

use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub use footfall_event::goal::Goal;
use sha2::{Digest, Sha256};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("unknown time zone `{0}` (use an IANA name such as Asia/Kolkata)")]
    BadTimezone(String),
    #[error("property `{0}` does not exist")]
    NoSuchProperty(String),
    #[error("invalid value: {0}")]
    Invalid(String),
    /// A remote metadata database cannot be reached now; retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A remote metadata database refused a statement.
    #[error("metadata database error: {0}")]
    Remote(String),
}

/// A merchant's site or app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Property {
    pub tracking_id: String,
    pub name: String,
    /// IANA zone; days and hours of this property's reports are local to it.
    pub timezone: String,
    /// Hosts allowed to send browser events; empty means any.
    pub domains: Vec<String>,
    /// Session gap of this property; `None` uses the server's default.
    pub session_gap_minutes: Option<u32>,
    pub created_at: String,
    /// What this property counts as conversions (`event:goal`).
    pub goals: Vec<Goal>,
}

/// Changes to a property; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PropertyChanges<'a> {
    pub name: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub domains: Option<&'a [String]>,
    pub session_gap_minutes: Option<u32>,
    /// The whole list of goals, replacing the present one.
    pub goals: Option<&'a [Goal]>,
}

impl Property {
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Whether a page host may send browser events for this property: the host equals
    /// an allowed domain or is a subdomain of one.
    pub fn allows_host(&self, host: &str) -> bool {
        self.domains.is_empty()
            || self.domains.iter().any(|d| {
                host == d
                    || (host.ends_with(d.as_str()) && host[..host.len() - d.len()].ends_with('.'))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Server-side ingestion.
    Write,
    /// Queries.
    Read,
    /// Operations on the whole installation (reprocessing); property `*`.
    Admin,
}

/// The property of admin keys: all of them.
pub const ALL_PROPERTIES: &str = "*";

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "write" => Some(Scope::Write),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// What a valid API key grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyGrant {
    /// Public, non-secret identifier of the key (its first characters).
    pub key_id: String,
    pub property: String,
    pub scope: Scope,
}

/// An API key as it may be listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub key_id: String,
    pub property: String,
    pub scope: Scope,
    pub created_at: String,
}

/// Metadata store contract.
///
/// - Every successful write is durable (committed) when the call returns and visible to
///   every later read, from this or any other process on the same store.
/// - `change_counter` moves whenever another connection commits, so a long-running
///   server can cache reads and refresh only when something changed.
/// - Keys are returned in clear only by `create_key`; the store keeps a hash.
pub trait MetaStore: Send + Sync + 'static {
    fn create_property(&self, name: &str, timezone: &str, domains: &[String]) -> Result<Property>;
    fn update_property(&self, tracking_id: &str, changes: PropertyChanges<'_>) -> Result<Property>;
    fn property(&self, tracking_id: &str) -> Result<Option<Property>>;
    fn properties(&self) -> Result<Vec<Property>>;
    /// Creates a key; returns the clear key (shown once) and its grant.
    fn create_key(&self, tracking_id: &str, scope: Scope) -> Result<(String, KeyGrant)>;
    fn verify_key(&self, key: &str) -> Result<Option<KeyGrant>>;
    /// The keys of a property (`*`: the admin keys), oldest first.
    fn keys(&self, tracking_id: &str) -> Result<Vec<KeyInfo>>;
    /// Revokes a property's key by its id: it stops working at once here, and on other
    /// nodes at their next metadata refresh (`change_counter`). Whether there was one.
    fn revoke_key(&self, tracking_id: &str, key_id: &str) -> Result<bool>;
    /// The installation's 16-byte secret for visitor hashing (created on first use).
    fn secret(&self) -> Result<[u8; 16]>;
    /// The salt of a UTC day (days since the epoch), created on first use. Salts of days
    /// before `day - 1` are deleted, so address-derived ids cannot be recomputed later.
    fn daily_salt(&self, day: i64) -> Result<[u8; 16]>;
    fn change_counter(&self) -> Result<u64>;
    /// Lines of an imported file (by content fingerprint) already acknowledged for a
    /// property, and whether the import completed.
    fn import_progress(&self, property: &str, fingerprint: &str) -> Result<Option<(u64, bool)>>;
    fn record_import(
        &self,
        property: &str,
        fingerprint: &str,
        lines_done: u64,
        complete: bool,
    ) -> Result<()>;
}

/// SQLite implementation of [`MetaStore`].
pub struct SqliteMeta {
    conn: Mutex<Connection>,
}

pub const ID_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
pub const KEY_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

pub fn random_string(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

pub fn hash_key(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn validate_tz(tz: &str) -> Result<()> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| Error::BadTimezone(tz.into()))
}

pub fn normalise_domains(domains: &[String]) -> Result<Vec<String>> {
    domains
        .iter()
        .map(|d| {
            let d = d.trim().trim_start_matches("www.").to_ascii_lowercase();
            if d.is_empty() || d.contains('/') || d.contains(' ') {
                Err(Error::Invalid(format!("`{d}` is not a domain name")))
            } else {
                Ok(d)
            }
        })
        .collect()
}

/// A new property with a fresh tracking id, its inputs checked (every [`MetaStore`]
/// creates properties through this).
pub fn new_property(name: &str, timezone: &str, domains: &[String]) -> Result<Property> {
    validate_tz(timezone)?;
    if name.trim().is_empty() {
        return Err(Error::Invalid("a property needs a name".into()));
    }
    Ok(Property {
        tracking_id: format!("FF-{}", random_string(ID_ALPHABET, 8)),
        name: name.into(),
        timezone: timezone.into(),
        domains: normalise_domains(domains)?,
        session_gap_minutes: None,
        goals: Vec::new(),
        created_at: now_text(),
    })
}

/// [`PropertyChanges`] checked and owned, so that a store may apply them where it
/// reads the row (inside a transaction, say).
#[derive(Debug, Clone, Default)]
pub struct CheckedChanges {
    name: Option<String>,
    timezone: Option<String>,
    domains: Option<Vec<String>>,
    session_gap_minutes: Option<u32>,
    goals: Option<Vec<Goal>>,
}

impl PropertyChanges<'_> {
    /// Checks every value a change names (every [`MetaStore`] goes through this).
    pub fn check(&self) -> Result<CheckedChanges> {
        if let Some(tz) = self.timezone {
            validate_tz(tz)?;
        }
        if let Some(g) = self.goals {
            footfall_event::goal::check_goals(g).map_err(Error::Invalid)?;
        }
        Ok(CheckedChanges {
            name: self.name.map(String::from),
            timezone: self.timezone.map(String::from),
            domains: self.domains.map(normalise_domains).transpose()?,
            session_gap_minutes: self
                .session_gap_minutes
                .map(check_session_gap)
                .transpose()?,
            goals: self.goals.map(<[Goal]>::to_vec),
        })
    }
}

impl CheckedChanges {
    /// Sets the fields the change names.
    pub fn apply(&self, p: &mut Property) {
        if let Some(n) = &self.name {
            p.name = n.clone();
        }
        if let Some(tz) = &self.timezone {
            p.timezone = tz.clone();
        }
        if let Some(d) = &self.domains {
            p.domains = d.clone();
        }
        if self.session_gap_minutes.is_some() {
            p.session_gap_minutes = self.session_gap_minutes;
        }
        if let Some(g) = &self.goals {
            p.goals = g.clone();
        }
    }
}

/// Checks a property's session gap.
pub fn check_session_gap(minutes: u32) -> Result<u32> {
    if (1..=24 * 60).contains(&minutes) {
        Ok(minutes)
    } else {
        Err(Error::Invalid(
            "session gap must be 1 to 1440 minutes".into(),
        ))
    }
}

/// A new API key and its grant (every [`MetaStore`] mints keys through this): admin
/// keys cover all properties, other keys one that exists.
pub fn mint_key(
    tracking_id: &str,
    scope: Scope,
    property_exists: bool,
) -> Result<(String, KeyGrant)> {
    if scope == Scope::Admin {
        if tracking_id != ALL_PROPERTIES {
            return Err(Error::Invalid(
                "admin keys cover all properties (`*`)".into(),
            ));
        }
    } else if !property_exists {
        return Err(Error::NoSuchProperty(tracking_id.into()));
    }
    let prefix = match scope {
        Scope::Write => "ffw_",
        Scope::Read => "ffr_",
        Scope::Admin => "ffa_",
    };
    let key = format!("{prefix}{}", random_string(KEY_ALPHABET, 32));
    let grant = KeyGrant {
        key_id: key[..10].to_string(),
        property: tracking_id.into(),
        scope,
    };
    Ok((key, grant))
}

impl SqliteMeta {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS properties (
                tracking_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                timezone TEXT NOT NULL,
                domains TEXT NOT NULL,
                created_at TEXT NOT NULL,
                session_gap_minutes INTEGER,
                goals TEXT NOT NULL DEFAULT '[]'
            );
            CREATE TABLE IF NOT EXISTS api_keys (
                key_hash TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                tracking_id TEXT NOT NULL,
                scope TEXT NOT NULL,
                created_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS secrets (
                name TEXT PRIMARY KEY,
                value BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS imports (
                tracking_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                lines_done INTEGER NOT NULL,
                complete INTEGER NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (tracking_id, fingerprint)
            );
            CREATE TABLE IF NOT EXISTS salts (
                day INTEGER PRIMARY KEY,
                value BLOB NOT NULL
            );",
        )?;
        // Stores made before goals existed get the column.
        let has_goals = conn
            .prepare("SELECT 1 FROM pragma_table_info('properties') WHERE name = 'goals'")?
            .exists([])?;
        if !has_goals {
            conn.execute_batch(
                "ALTER TABLE properties ADD COLUMN goals TEXT NOT NULL DEFAULT '[]'",
            )?;
        }
        conn.execute_batch(sqlite_accounts::SCHEMA)?;
        conn.execute_batch("")?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn row_to_property(row: &rusqlite::Row<'_>) -> rusqlite::Result<Property> {
        let domains: String = row.get(3)?;
        Ok(Property {
            tracking_id: row.get(0)?,
            name: row.get(1)?,
            timezone: row.get(2)?,
            domains: domains
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            created_at: row.get(4)?,
            session_gap_minutes: row.get(5)?,
            goals: goals_from_text(&row.get::<_, String>(6)?),
        })
    }
}

/// Goals as stored (a JSON list).
pub fn goals_to_text(goals: &[Goal]) -> String {
    serde_json::to_string(goals).expect("goals serialise")
}

/// Goals from their stored text; a row the store itself wrote always parses.
pub fn goals_from_text(text: &str) -> Vec<Goal> {
    serde_json::from_str(text).unwrap_or_default()
}

pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl MetaStore for SqliteMeta {
    fn create_property(&self, name: &str, timezone: &str, domains: &[String]) -> Result<Property> {
        let p = new_property(name, timezone, domains)?;
        self.conn.lock().unwrap().execute(
            "INSERT INTO properties (tracking_id, name, timezone, domains, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.tracking_id, p.name, p.timezone, p.domains.join(","), p.created_at],
        )?;
        Ok(p)
    }

    fn update_property(&self, tracking_id: &str, changes: PropertyChanges<'_>) -> Result<Property> {
        let changes = changes.check()?;
        let mut p = self
            .property(tracking_id)?
            .ok_or_else(|| Error::NoSuchProperty(tracking_id.into()))?;
        changes.apply(&mut p);
        self.conn.lock().unwrap().execute(
            "UPDATE properties SET name = ?2, timezone = ?3, domains = ?4, session_gap_minutes = ?5, goals = ?6 WHERE tracking_id = ?1",
            params![p.tracking_id, p.name, p.timezone, p.domains.join(","), p.session_gap_minutes, goals_to_text(&p.goals)],
        )?;
        Ok(p)
    }

    fn property(&self, tracking_id: &str) -> Result<Option<Property>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT tracking_id, name, timezone, domains, created_at, session_gap_minutes, goals FROM properties WHERE tracking_id = ?1",
                params![tracking_id],
                Self::row_to_property,
            )
            .optional()?)
    }

    fn properties(&self) -> Result<Vec<Property>> {
        let conn = self.conn.lock().unwrap();
        let mut st = conn.prepare(
            "SELECT tracking_id, name, timezone, domains, created_at, session_gap_minutes, goals FROM properties ORDER BY created_at, tracking_id",
        )?;
        let rows = st.query_map([], Self::row_to_property)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn create_key(&self, tracking_id: &str, scope: Scope) -> Result<(String, KeyGrant)> {
        let exists = scope == Scope::Admin || self.property(tracking_id)?.is_some();
        let (key, grant) = mint_key(tracking_id, scope, exists)?;
        self.conn.lock().unwrap().execute(
            "INSERT INTO api_keys (key_hash, key_id, tracking_id, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash_key(&key), grant.key_id, tracking_id, scope.as_str(), now_text()],
        )?;
        Ok((key, grant))
    }

    fn verify_key(&self, key: &str) -> Result<Option<KeyGrant>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT key_id, tracking_id, scope FROM api_keys WHERE key_hash = ?1",
                params![hash_key(key)],
                |r| {
                    let scope: String = r.get(2)?;
                    Ok(KeyGrant {
                        key_id: r.get(0)?,
                        property: r.get(1)?,
                        scope: Scope::parse(&scope).unwrap_or(Scope::Read),
                    })
                },
            )
            .optional()?)
    }

    fn keys(&self, tracking_id: &str) -> Result<Vec<KeyInfo>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare(
            "SELECT key_id, tracking_id, scope, created_at FROM api_keys WHERE tracking_id = ?1
             ORDER BY created_at, key_id",
        )?;
        let rows = st.query_map(params![tracking_id], |r| {
            let scope: String = r.get(2)?;
            Ok(KeyInfo {
                key_id: r.get(0)?,
                property: r.get(1)?,
                scope: Scope::parse(&scope).unwrap_or(Scope::Read),
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_key(&self, tracking_id: &str, key_id: &str) -> Result<bool> {
        Ok(self.conn.lock().unwrap().execute(
            "DELETE FROM api_keys WHERE tracking_id = ?1 AND key_id = ?2",
            params![tracking_id, key_id],
        )? > 0)
    }

    fn secret(&self) -> Result<[u8; 16]> {
        let conn = self.conn.lock().unwrap();
        let fresh: [u8; 16] = rand::rng().random();
        conn.execute(
            "INSERT INTO secrets (name, value) VALUES ('visitor', ?1) ON CONFLICT (name) DO NOTHING",
            params![fresh.to_vec()],
        )?;
        let v: Vec<u8> = conn.query_row(
            "SELECT value FROM secrets WHERE name = 'visitor'",
            [],
            |r| r.get(0),
        )?;
        v.try_into()
            .map_err(|_| Error::Invalid("stored secret has the wrong length".into()))
    }

    fn daily_salt(&self, day: i64) -> Result<[u8; 16]> {
        let conn = self.conn.lock().unwrap();
        let fresh: [u8; 16] = rand::rng().random();
        conn.execute(
            "INSERT INTO salts (day, value) VALUES (?1, ?2) ON CONFLICT (day) DO NOTHING",
            params![day, fresh.to_vec()],
        )?;
        // Keep today's and yesterday's salt only (48 h at most).
        conn.execute("DELETE FROM salts WHERE day < ?1", params![day - 1])?;
        let v: Vec<u8> = conn.query_row(
            "SELECT value FROM salts WHERE day = ?1",
            params![day],
            |r| r.get(0),
        )?;
        v.try_into()
            .map_err(|_| Error::Invalid("stored salt has the wrong length".into()))
    }

    fn import_progress(&self, property: &str, fingerprint: &str) -> Result<Option<(u64, bool)>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT lines_done, complete FROM imports WHERE tracking_id = ?1 AND fingerprint = ?2",
                params![property, fingerprint],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?)
    }

    fn record_import(
        &self,
        property: &str,
        fingerprint: &str,
        lines_done: u64,
        complete: bool,
    ) -> Result<()> {
        self.conn.lock().unwrap().execute(
            "INSERT INTO imports (tracking_id, fingerprint, lines_done, complete, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tracking_id, fingerprint) DO UPDATE SET lines_done = ?3, complete = ?4, updated_at = ?5",
            params![property, fingerprint, lines_done as i64, complete as i64, now_text()],
        )?;
        Ok(())
    }

    fn change_counter(&self) -> Result<u64> {
        let v: i64 = self
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sqlite(tempfile::TempDir);

    impl contract::Harness for Sqlite {
        fn connect(&mut self) -> std::sync::Arc<dyn MetaStore> {
            std::sync::Arc::new(SqliteMeta::open(self.0.path().join("meta.db")).unwrap())
        }
    }

    #[test]
    fn meta_store_contract() {
        contract::run(&mut Sqlite(tempfile::tempdir().unwrap()));
    }

    #[test]
    fn account_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(dir.path().join("meta.db")).unwrap();
        let a = m.create_property("A", "UTC", &[]).unwrap();
        let b = m.create_property("B", "UTC", &[]).unwrap();
        accounts::contract::run(&m, &a.tracking_id, &b.tracking_id);
    }

    /// A store made before goals existed opens, its properties with no goals.
    #[test]
    fn stores_without_goals_get_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE properties (tracking_id TEXT PRIMARY KEY, name TEXT NOT NULL,
                timezone TEXT NOT NULL, domains TEXT NOT NULL, created_at TEXT NOT NULL,
                session_gap_minutes INTEGER);
             INSERT INTO properties VALUES ('FF-OLD00000', 'Old', 'UTC', '', 'then', NULL);",
        )
        .unwrap();
        drop(c);
        let m = SqliteMeta::open(&path).unwrap();
        let p = m.property("FF-OLD00000").unwrap().unwrap();
        assert!(p.goals.is_empty());
        drop(m);
        SqliteMeta::open(&path).expect("opens again once migrated");
    }

    #[test]
    fn properties_keys_salts() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(dir.path().join("meta.db")).unwrap();
        let p = m
            .create_property("Shop", "Asia/Kolkata", &["www.Shop.example".into()])
            .unwrap();
        assert!(p.tracking_id.starts_with("FF-") && p.tracking_id.len() == 11);
        assert_eq!(p.domains, vec!["shop.example"]);
        assert!(p.allows_host("shop.example") && p.allows_host("m.shop.example"));
        assert!(!p.allows_host("evilshop.example"));
        assert!(matches!(
            m.create_property("x", "Mars/Base", &[]),
            Err(Error::BadTimezone(_))
        ));
        let (key, grant) = m.create_key(&p.tracking_id, Scope::Read).unwrap();
        assert_eq!(m.verify_key(&key).unwrap(), Some(grant));
        assert_eq!(m.verify_key("ffr_nope").unwrap(), None);
        let stored: String = m
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT key_hash FROM api_keys", [], |r| r.get(0))
            .unwrap();
        assert!(!stored.contains(&key[4..]));
        let u = m
            .update_property(
                &p.tracking_id,
                PropertyChanges {
                    timezone: Some("America/St_Johns"),
                    session_gap_minutes: Some(45),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(m.property(&p.tracking_id).unwrap().unwrap(), u);
        assert_eq!(m.secret().unwrap(), m.secret().unwrap());
        let s1 = m.daily_salt(100).unwrap();
        assert_eq!(m.daily_salt(100).unwrap(), s1);
        m.daily_salt(101).unwrap();
        m.daily_salt(102).unwrap();
        let n: i64 = m
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM salts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "salts older than 48 h are deleted");
        // Another connection's commit moves the change counter.
        let before = m.change_counter().unwrap();
        let other = SqliteMeta::open(dir.path().join("meta.db")).unwrap();
        other.create_property("Other", "UTC", &[]).unwrap();
        assert_ne!(m.change_counter().unwrap(), before);
        assert_eq!(m.properties().unwrap().len(), 2);
    }
}
