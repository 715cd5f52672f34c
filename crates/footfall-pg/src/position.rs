//! The archiver's position in the shared database ([`PositionStore`]), so that an
//! archiver that comes back on a new machine (a pod with a fresh `emptyDir`) goes on
//! where the last one committed instead of archiving the broker's retained records again.
//!
//! Fencing: each save bumps the row's generation and succeeds only if the generation is
//! still the one this store last loaded or saved; a second archiver that loaded after
//! this one makes this one's next save fail, and the archiver stops on it.

use std::sync::Mutex;

use footfall_archive::position::PositionStore;
use footfall_archive::{ArchiverState, Error as ArchiveError};

use crate::conn::Pool;
use crate::meta::ensure_schema;
use crate::Error;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_archiver_position (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL
);
";

/// The archiver position named `name` (one per log) in PostgreSQL or YSQL.
pub struct PgPosition {
    pool: Pool,
    name: String,
    /// The generation this store last loaded or saved (0: no row yet).
    generation: Mutex<i64>,
}

impl PgPosition {
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        let pool = Pool::new(url, 1, "archiver")?;
        ensure_schema(&pool, SCHEMA)?;
        Ok(Self {
            pool,
            name: name.to_string(),
            generation: Mutex::new(0),
        })
    }
}

fn state_err(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::State(e.to_string())
}

impl PositionStore for PgPosition {
    fn load(&self) -> Result<Option<ArchiverState>, ArchiveError> {
        let name = self.name.clone();
        let row = self
            .pool
            .call(move |c| {
                c.query_opt(
                    "SELECT generation, state FROM ff_archiver_position WHERE name = $1",
                    &[&name],
                )
                .map(|r| r.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))))
            })
            .map_err(state_err)?;
        let mut generation = self.generation.lock().unwrap();
        match row {
            None => {
                *generation = 0;
                Ok(None)
            }
            Some((g, text)) => {
                *generation = g;
                serde_json::from_str(&text).map(Some).map_err(state_err)
            }
        }
    }

    fn save(&self, state: &ArchiverState) -> Result<(), ArchiveError> {
        let text = serde_json::to_string(state).map_err(state_err)?;
        let mut generation = self.generation.lock().unwrap();
        let (name, seen) = (self.name.clone(), *generation);
        let written = self
            .pool
            .call(move |c| {
                if seen == 0 {
                    c.execute(
                        "INSERT INTO ff_archiver_position (name, generation, state)
                         VALUES ($1, 1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&name, &text],
                    )
                } else {
                    c.execute(
                        "UPDATE ff_archiver_position SET generation = generation + 1, state = $2
                         WHERE name = $1 AND generation = $3",
                        &[&name, &text, &seen],
                    )
                }
            })
            .map_err(state_err)?;
        if written != 1 {
            return Err(ArchiveError::State(format!(
                "another archiver has taken over the position `{}`; this one stops",
                self.name
            )));
        }
        *generation = seen + 1;
        Ok(())
    }
}
