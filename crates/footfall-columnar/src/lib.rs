//! Raw events in columns, and the query engine over them.
//!
//! The rollups answer the common questions in milliseconds but hold one dimension at a
//! time. This crate keeps every event — with its visit's attributes — in Parquet files
//! beside the archive ([`files`]), made from the archive by the same sessionisation the
//! processor uses, and answers with Apache DataFusion what the rollups cannot
//! ([`engine`]): several dimensions at once, any filter with any breakdown, logical and
//! regular-expression filters. The query API's planner (`footfall-server`) asks the
//! rollups first and comes here when they answer [`footfall_query::QueryError::Unsupported`].
//!
//! DataFusion is the heaviest dependency of the build, so it lives only in this crate,
//! which the binary takes in with its `columnar` feature.

pub mod engine;
pub mod files;
mod history;
mod names;
pub mod resident;
pub mod sql;
pub mod table;

pub use engine::ColumnarEngine;
pub use files::{refresh_loop, Columns, RefreshReport};

/// The version of the rows' rules and schema: files of another version are made again
/// (2: browser-style traffic that names no browser is left out, as the rollups do).
pub const FORMAT: u32 = 2;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("archive: {0}")]
    Archive(#[from] footfall_archive::Error),
    #[error("columnar: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    Other(String),
}
