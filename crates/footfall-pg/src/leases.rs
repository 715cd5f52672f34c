//! [`Leases`] on PostgreSQL: partition ownership beside the checkpoints it guards.

use std::time::Duration;

use footfall_store::leases::Leases;

use crate::conn::Pool;
use crate::meta::ensure_schema;
use crate::Error;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_leases (
    part INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_processors (
    owner TEXT PRIMARY KEY,
    seen_until TIMESTAMPTZ NOT NULL
);
";

pub struct PgLeases {
    pool: Pool,
}

impl PgLeases {
    pub fn open(url: &str) -> Result<Self, Error> {
        let pool = Pool::new(url, 1, "leases")?;
        ensure_schema(&pool, SCHEMA)?;
        Ok(Self { pool })
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Leases for PgLeases {
    fn heartbeat(&self, owner: &str, ttl: Duration) -> Result<usize, String> {
        let (owner, ttl) = (owner.to_string(), ms(ttl));
        self.pool
            .call(move |c| {
                c.execute(
                    "INSERT INTO ff_processors (owner, seen_until)
                     VALUES ($1, now() + $2::bigint * interval '1 millisecond')
                     ON CONFLICT (owner) DO UPDATE SET seen_until = EXCLUDED.seen_until",
                    &[&owner, &ttl],
                )?;
                c.execute(
                    "DELETE FROM ff_processors WHERE seen_until < now() - interval '1 day'",
                    &[],
                )?;
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM ff_processors WHERE seen_until > now()",
                        &[],
                    )?
                    .get(0);
                Ok(n as usize)
            })
            .map_err(|e| e.to_string())
    }

    fn leave(&self, owner: &str) -> Result<(), String> {
        let owner = owner.to_string();
        self.pool
            .call(move |c| {
                c.execute("DELETE FROM ff_processors WHERE owner = $1", &[&owner])
                    .map(|_| ())
            })
            .map_err(|e| e.to_string())
    }

    fn holders(&self) -> Result<Vec<(u32, String)>, String> {
        self.pool
            .call(|c| {
                Ok(c.query(
                    "SELECT part, owner FROM ff_leases WHERE expires_at > now() ORDER BY part",
                    &[],
                )?
                .into_iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                .collect())
            })
            .map_err(|e| e.to_string())
    }

    fn acquire(&self, partition: u32, owner: &str, ttl: Duration) -> Result<bool, String> {
        let (part, owner, ttl) = (partition as i32, owner.to_string(), ms(ttl));
        self.pool
            .call(move |c| {
                let n = c.execute(
                    "INSERT INTO ff_leases (part, owner, expires_at)
                     VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
                     ON CONFLICT (part) DO UPDATE
                       SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
                       WHERE ff_leases.owner = EXCLUDED.owner OR ff_leases.expires_at <= now()",
                    &[&part, &owner, &ttl],
                )?;
                Ok(n == 1)
            })
            .map_err(|e| e.to_string())
    }

    fn release(&self, partition: u32, owner: &str) -> Result<(), String> {
        let (part, owner) = (partition as i32, owner.to_string());
        self.pool
            .call(move |c| {
                c.execute(
                    "DELETE FROM ff_leases WHERE part = $1 AND owner = $2",
                    &[&part, &owner],
                )
                .map(|_| ())
            })
            .map_err(|e| e.to_string())
    }
}
