//! SQL functions naming the geo codes: `country_name(visit_country)` and
//! `region_name(visit_region)`, what `visit:country_name` and `visit:region_name` group
//! and filter by (docs/METRICS.md), and what SQL users may call too. A code without a
//! name answers itself.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;

/// Registers the functions in `ctx`.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(code_name(
        "country_name",
        footfall_enrich::names::country_name,
    ));
    ctx.register_udf(code_name(
        "region_name",
        footfall_enrich::names::region_name,
    ));
}

fn code_name(name: &str, of: fn(&str) -> Option<&'static str>) -> ScalarUDF {
    let f = move |args: &[ColumnarValue]| {
        let codes = ColumnarValue::values_to_arrays(args)?;
        let codes = datafusion::arrow::compute::cast(&codes[0], &DataType::Utf8)?;
        let codes = datafusion::common::cast::as_string_array(&codes)?;
        let names: StringArray = codes
            .iter()
            .map(|c| c.map(|c| of(c).unwrap_or(c)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(names) as ArrayRef))
    };
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(f),
    )
}
