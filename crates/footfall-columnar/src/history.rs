//! `events` over a property's whole history, for connections that live for hours (the
//! PostgreSQL wire protocol): the day files are listed again at every scan, so a new or
//! remade day is read by the next statement, as it is by the query API.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::files::Columns;
use crate::table::schema;

pub(crate) struct History {
    columns: Arc<Columns>,
    store_url: url::Url,
    property: String,
}

impl History {
    pub(crate) fn new(columns: Arc<Columns>, store_url: url::Url, property: String) -> Self {
        Self {
            columns,
            store_url,
            property,
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "History({})", self.property)
    }
}

#[async_trait]
impl TableProvider for History {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters are applied again above the scan; the Parquet reader uses them to skip
    /// files and row groups by their statistics.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let days = self
            .columns
            .day_files(&self.property, NaiveDate::MIN, NaiveDate::MAX)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if days.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema().project(p)?),
                None => schema(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        crate::engine::listing_table(&self.store_url, &days)?
            .scan(state, projection, filters, limit)
            .await
    }
}
