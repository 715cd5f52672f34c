//! [`MetaStore`] on PostgreSQL: the same tables as the embedded SQLite store, shared by
//! every node of a cluster.

use footfall_meta::{
    goals_from_text, goals_to_text, hash_key, mint_key, new_property, now_text, Error, KeyGrant,
    KeyInfo, MetaStore, Property, PropertyChanges, Result, Scope,
};
use postgres::{GenericClient, Row};
use rand::Rng;

use crate::conn::Pool;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_properties (
    tracking_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    timezone TEXT NOT NULL,
    domains TEXT NOT NULL,
    created_at TEXT NOT NULL,
    session_gap_minutes INTEGER
);
ALTER TABLE ff_properties ADD COLUMN IF NOT EXISTS goals TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS ff_api_keys (
    key_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    tracking_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_imports (
    tracking_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    lines_done BIGINT NOT NULL,
    complete BOOLEAN NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tracking_id, fingerprint)
);
CREATE TABLE IF NOT EXISTS ff_salts (
    day BIGINT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_meta_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO ff_meta_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
";

/// Every change to properties or keys bumps this row in the same transaction, so that
/// every node's metadata cache sees it (`change_counter`) without LISTEN/NOTIFY.
const BUMP: &str = "UPDATE ff_meta_version SET version = version + 1 WHERE id = 1";

const PROPERTY_COLUMNS: &str =
    "tracking_id, name, timezone, domains, created_at, session_gap_minutes, goals";

pub struct PgMeta {
    pub(crate) pool: Pool,
}

/// Creates the tables if they are missing. Nodes starting together may race on
/// `CREATE TABLE IF NOT EXISTS` (PostgreSQL then reports a duplicate type); the loser
/// retries and finds the tables there.
pub(crate) fn ensure_schema(
    pool: &Pool,
    schema: &'static str,
) -> std::result::Result<(), crate::Error> {
    let mut last = None;
    for _ in 0..5 {
        match pool.call(move |c| c.batch_execute(schema)) {
            Ok(()) => return Ok(()),
            Err(crate::Error::Db(m)) => {
                last = Some(crate::Error::Db(m));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the loop ran"))
}

fn row_to_property(r: &Row) -> Property {
    let domains: String = r.get(3);
    let gap: Option<i32> = r.get(5);
    Property {
        tracking_id: r.get(0),
        name: r.get(1),
        timezone: r.get(2),
        domains: domains
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        created_at: r.get(4),
        session_gap_minutes: gap.map(|g| g as u32),
        goals: goals_from_text(r.get(6)),
    }
}

fn select_property(
    c: &mut impl GenericClient,
    id: &str,
) -> Result<Option<Property>, postgres::Error> {
    Ok(c.query_opt(
        &format!("SELECT {PROPERTY_COLUMNS} FROM ff_properties WHERE tracking_id = $1"),
        &[&id],
    )?
    .as_ref()
    .map(row_to_property))
}

fn sixteen(v: Vec<u8>, what: &str) -> Result<[u8; 16]> {
    v.try_into()
        .map_err(|_| Error::Invalid(format!("stored {what} has the wrong length")))
}

impl PgMeta {
    /// Connects (lazily) to `url` and creates the tables if needed.
    pub fn open(url: &str) -> Result<Self> {
        let pool = Pool::new(url, 1, "meta")?;
        ensure_schema(&pool, SCHEMA)?;
        ensure_schema(&pool, crate::accounts::SCHEMA)?;
        Ok(Self { pool })
    }
}

impl MetaStore for PgMeta {
    fn create_property(&self, name: &str, timezone: &str, domains: &[String]) -> Result<Property> {
        let p = new_property(name, timezone, domains)?;
        let q = p.clone();
        self.pool.call(move |c| {
            let mut t = c.transaction()?;
            t.execute(
                "INSERT INTO ff_properties (tracking_id, name, timezone, domains, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&q.tracking_id, &q.name, &q.timezone, &q.domains.join(","), &q.created_at],
            )?;
            t.execute(BUMP, &[])?;
            t.commit()
        })?;
        Ok(p)
    }

    fn update_property(&self, tracking_id: &str, changes: PropertyChanges<'_>) -> Result<Property> {
        let changes = changes.check()?;
        let id = tracking_id.to_string();
        // Read and write in one transaction, the row locked, so two concurrent updates
        // of different fields both land.
        self.pool
            .call(move |c| {
                let mut t = c.transaction()?;
                let row = t.query_opt(
                    &format!(
                        "SELECT {PROPERTY_COLUMNS} FROM ff_properties WHERE tracking_id = $1 FOR UPDATE"
                    ),
                    &[&id],
                )?;
                let Some(mut p) = row.as_ref().map(row_to_property) else {
                    return Ok(None);
                };
                changes.apply(&mut p);
                t.execute(
                    "UPDATE ff_properties SET name = $2, timezone = $3, domains = $4, session_gap_minutes = $5, goals = $6 WHERE tracking_id = $1",
                    &[
                        &p.tracking_id,
                        &p.name,
                        &p.timezone,
                        &p.domains.join(","),
                        &p.session_gap_minutes.map(|g| g as i32),
                        &goals_to_text(&p.goals),
                    ],
                )?;
                t.execute(BUMP, &[])?;
                t.commit()?;
                Ok(Some(p))
            })?
            .ok_or_else(|| Error::NoSuchProperty(tracking_id.into()))
    }

    fn property(&self, tracking_id: &str) -> Result<Option<Property>> {
        let id = tracking_id.to_string();
        Ok(self.pool.call(move |c| select_property(c, &id))?)
    }

    fn properties(&self) -> Result<Vec<Property>> {
        Ok(self.pool.call(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {PROPERTY_COLUMNS} FROM ff_properties ORDER BY created_at, tracking_id"
                ),
                &[],
            )?
            .iter()
            .map(row_to_property)
            .collect())
        })?)
    }

    fn create_key(&self, tracking_id: &str, scope: Scope) -> Result<(String, KeyGrant)> {
        let exists = scope == Scope::Admin || self.property(tracking_id)?.is_some();
        let (key, grant) = mint_key(tracking_id, scope, exists)?;
        let (hash, key_id, property) =
            (hash_key(&key), grant.key_id.clone(), grant.property.clone());
        self.pool.call(move |c| {
            let mut t = c.transaction()?;
            t.execute(
                "INSERT INTO ff_api_keys (key_hash, key_id, tracking_id, scope, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &key_id, &property, &scope.as_str(), &now_text()],
            )?;
            t.execute(BUMP, &[])?;
            t.commit()
        })?;
        Ok((key, grant))
    }

    fn verify_key(&self, key: &str) -> Result<Option<KeyGrant>> {
        let hash = hash_key(key);
        Ok(self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT key_id, tracking_id, scope FROM ff_api_keys WHERE key_hash = $1",
                &[&hash],
            )?
            .map(|r| {
                let scope: String = r.get(2);
                KeyGrant {
                    key_id: r.get(0),
                    property: r.get(1),
                    scope: Scope::parse(&scope).unwrap_or(Scope::Read),
                }
            }))
        })?)
    }

    fn keys(&self, tracking_id: &str) -> Result<Vec<KeyInfo>> {
        let id = tracking_id.to_string();
        Ok(self.pool.call(move |c| {
            Ok(c.query(
                "SELECT key_id, tracking_id, scope, created_at FROM ff_api_keys
                 WHERE tracking_id = $1 ORDER BY created_at, key_id",
                &[&id],
            )?
            .iter()
            .map(|r| KeyInfo {
                key_id: r.get(0),
                property: r.get(1),
                scope: Scope::parse(r.get::<_, &str>(2)).unwrap_or(Scope::Read),
                created_at: r.get(3),
            })
            .collect())
        })?)
    }

    fn revoke_key(&self, tracking_id: &str, key_id: &str) -> Result<bool> {
        let (id, k) = (tracking_id.to_string(), key_id.to_string());
        Ok(self.pool.call(move |c| {
            let mut t = c.transaction()?;
            let n = t.execute(
                "DELETE FROM ff_api_keys WHERE tracking_id = $1 AND key_id = $2",
                &[&id, &k],
            )?;
            t.execute(BUMP, &[])?;
            t.commit()?;
            Ok(n > 0)
        })?)
    }

    fn secret(&self) -> Result<[u8; 16]> {
        let fresh: [u8; 16] = rand::rng().random();
        let v: Vec<u8> = self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_secrets (name, value) VALUES ('visitor', $1) ON CONFLICT (name) DO NOTHING",
                &[&fresh.as_slice()],
            )?;
            Ok(c.query_one("SELECT value FROM ff_secrets WHERE name = 'visitor'", &[])?
                .get(0))
        })?;
        sixteen(v, "secret")
    }

    fn daily_salt(&self, day: i64) -> Result<[u8; 16]> {
        let fresh: [u8; 16] = rand::rng().random();
        let v: Vec<u8> = self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_salts (day, value) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING",
                &[&day, &fresh.as_slice()],
            )?;
            // Today's and yesterday's salt only (48 h at most).
            c.execute("DELETE FROM ff_salts WHERE day < $1", &[&(day - 1)])?;
            Ok(
                c.query_one("SELECT value FROM ff_salts WHERE day = $1", &[&day])?
                    .get(0),
            )
        })?;
        sixteen(v, "salt")
    }

    fn change_counter(&self) -> Result<u64> {
        let v: i64 = self.pool.call(|c| {
            Ok(
                c.query_one("SELECT version FROM ff_meta_version WHERE id = 1", &[])?
                    .get(0),
            )
        })?;
        Ok(v as u64)
    }

    fn import_progress(&self, property: &str, fingerprint: &str) -> Result<Option<(u64, bool)>> {
        let (p, f) = (property.to_string(), fingerprint.to_string());
        Ok(self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT lines_done, complete FROM ff_imports WHERE tracking_id = $1 AND fingerprint = $2",
                &[&p, &f],
            )?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, bool>(1))))
        })?)
    }

    fn record_import(
        &self,
        property: &str,
        fingerprint: &str,
        lines_done: u64,
        complete: bool,
    ) -> Result<()> {
        let (p, f) = (property.to_string(), fingerprint.to_string());
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_imports (tracking_id, fingerprint, lines_done, complete, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tracking_id, fingerprint) DO UPDATE SET lines_done = $3, complete = $4, updated_at = $5",
                &[&p, &f, &(lines_done as i64), &complete, &now_text()],
            )
        })?;
        Ok(())
    }
}
