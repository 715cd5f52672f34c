//! PostgreSQL implementations of Footfall's shared stores, for running its roles on
//! several machines: [`PgMeta`] (properties, keys, secrets — the [`MetaStore`] seam) and
//! [`PgRollupStore`] (rollups, checkpoints — the [`RollupStore`] seam) and [`PgLeases`]
//! (which processor owns which log partition).
//!
//! Only SQL that YugabyteDB's YSQL also accepts is used (docs/DISTRIBUTED.md lists it):
//! plain tables with primary keys, `BYTEA`, `BIGINT`, `INSERT … ON CONFLICT`, and
//! transactions at the default isolation level. No extensions, no advisory locks, no
//! `LISTEN/NOTIFY`, no stored procedures.
//!
//! [`MetaStore`]: footfall_meta::MetaStore
//! [`RollupStore`]: footfall_store::RollupStore

mod accounts;
mod conn;
mod leases;
mod meta;
mod position;
mod rollup;
pub mod testing;

pub use leases::PgLeases;
pub use meta::PgMeta;
pub use position::PgPosition;
pub use rollup::{PgRollupStore, ReadCacheOptions};

/// The rollup part of a processor that owns every partition of its log (the embedded
/// file log, with its store in PostgreSQL). Processors of a cluster write part `p` for
/// log partition `p`, so the two never collide.
pub const ALL_PARTITIONS_PART: i32 = -1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// The database cannot be reached or is not answering now (a 503 upstream).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement.
    #[error("database error: {0}")]
    Db(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database connection pool is closed")]
    Closed,
}

/// SQLSTATE classes that mean "try again later" rather than "this statement is wrong":
/// connection exceptions (08), insufficient resources (53), operator intervention (57,
/// e.g. a restarting server) and transaction rollbacks (40, e.g. serialisation failures,
/// which YugabyteDB reports more often than PostgreSQL).
const TRANSIENT_CLASSES: [&str; 4] = ["08", "53", "57", "40"];

impl Error {
    fn unavailable(e: impl std::fmt::Display) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if !TRANSIENT_CLASSES.contains(&&db.code().code()[..2]) => {
                Error::Db(db.to_string())
            }
            _ => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<Error> for footfall_meta::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => footfall_meta::Error::Unavailable(m),
            Error::Closed => footfall_meta::Error::Unavailable("pool closed".into()),
            other => footfall_meta::Error::Remote(other.to_string()),
        }
    }
}

impl From<Error> for footfall_store::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Corrupt(m) => footfall_store::Error::Corrupt("postgres".into(), m),
            other => footfall_store::Error::Unavailable(other.to_string()),
        }
    }
}
