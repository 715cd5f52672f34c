//! The `events` table: one row per event with its visit's attributes (Arrow schema and
//! the conversion from [`EventRow`]s). Column names are the Stats API dimension names
//! with `:` as `_` (`visit:utm_source` is `visit_utm_source`).

use std::sync::{Arc, OnceLock};

use chrono::NaiveDate;
use chrono_tz::Tz;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use footfall_processor::rows::EventRow;
use footfall_store::rollup::local_time;
use footfall_store::{VisitKey, VISIT_FIELDS};

/// The column of a visit attribute (`visit:country` → `visit_country`).
pub fn column_of(dimension: &str) -> String {
    dimension.replace(':', "_")
}

/// Days since 1970-01-01, as Arrow's `Date32` counts them.
pub fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

/// The schema of every file (one version; a change rebuilds all files, see
/// [`crate::FORMAT`]).
pub fn schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let local = DataType::Timestamp(TimeUnit::Millisecond, None);
        let text_list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
        let mut fields = vec![
            // Event time: UTC milliseconds, and the property's local wall clock.
            Field::new("ts", DataType::Int64, false),
            Field::new("local_date", DataType::Date32, false),
            Field::new("local_ts", local.clone(), false),
            Field::new("visitor", DataType::UInt64, false),
            Field::new("event_name", DataType::Utf8, false),
            Field::new("pageview", DataType::Boolean, false),
            Field::new("event_page", DataType::Utf8, true),
            Field::new("event_hostname", DataType::Utf8, true),
            // Custom properties as two aligned lists (keys, values as text).
            Field::new("prop_keys", text_list.clone(), false),
            Field::new("prop_values", text_list, false),
            Field::new("revenue_currency", DataType::Utf8, true),
            Field::new("revenue_micros", DataType::Int64, true),
            // The visit: one row per visit has visit_first.
            Field::new("visit_id", DataType::UInt64, false),
            Field::new("visit_first", DataType::Boolean, false),
            // The event's place in its visit (0 first), in time order.
            Field::new("visit_seq", DataType::Int64, false),
            Field::new("visit_local_date", DataType::Date32, false),
            Field::new("visit_local_ts", local, false),
            Field::new("visit_pageviews", DataType::Int64, false),
            Field::new("visit_events", DataType::Int64, false),
            Field::new("visit_bounce", DataType::Boolean, false),
            Field::new("visit_duration_ms", DataType::Int64, false),
            Field::new("visit_entry_page", DataType::Utf8, true),
            Field::new("visit_exit_page", DataType::Utf8, true),
            Field::new("visit_entry_page_hostname", DataType::Utf8, true),
            Field::new("visit_exit_page_hostname", DataType::Utf8, true),
        ];
        for f in VISIT_FIELDS {
            fields.push(Field::new(column_of(f), DataType::Utf8, false));
        }
        Arc::new(Schema::new(fields))
    })
    .clone()
}

/// A visit's id: its visitor and start, mixed (unique within a property in practice;
/// 64 bits).
fn visit_id(visitor: u64, start: i64) -> u64 {
    let x = visitor ^ (start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // A finaliser so that neighbouring starts do not give neighbouring ids.
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

const QUARTER_HOUR_MS: i64 = 15 * 60 * 1000;
const DAY_MS: i64 = 24 * 3_600_000;

/// UTC milliseconds to local ones in a zone, remembering the offset of the last quarter
/// hour whose first and last millisecond have the same one (so every instant inside
/// has it: no zone changes its offset twice within a quarter hour). Rows come in time
/// order, so most conversions are an addition.
struct LocalClock<'a> {
    tz: &'a Tz,
    slot: i64,
    offset: Option<i64>,
}

impl<'a> LocalClock<'a> {
    fn new(tz: &'a Tz) -> Self {
        Self {
            tz,
            slot: i64::MIN,
            offset: None,
        }
    }

    fn offset_at(&self, ms: i64) -> i64 {
        local_time(self.tz, ms).and_utc().timestamp_millis() - ms
    }

    fn local_ms(&mut self, ms: i64) -> i64 {
        let slot = ms.div_euclid(QUARTER_HOUR_MS);
        if slot != self.slot {
            let lo = slot * QUARTER_HOUR_MS;
            let (a, b) = (self.offset_at(lo), self.offset_at(lo + QUARTER_HOUR_MS - 1));
            self.slot = slot;
            self.offset = (a == b).then_some(a);
        }
        ms + self.offset.unwrap_or_else(|| self.offset_at(ms))
    }
}

/// The local date (as `Date32`) of local milliseconds.
fn date_of_local_ms(local: i64) -> i32 {
    local.div_euclid(DAY_MS) as i32
}

/// The rows as one batch, local times in `tz`.
pub fn to_batch(rows: &[&EventRow], tz: &Tz) -> datafusion::error::Result<RecordBatch> {
    let n = rows.len();
    // Strings: room for typical lengths up front, rather than growing by copies.
    let strings = |bytes_each: usize| StringBuilder::with_capacity(n, n * bytes_each);
    let mut clock = LocalClock::new(tz);
    let mut visit_clock = LocalClock::new(tz);
    let mut ts = Int64Builder::with_capacity(n);
    let mut local_date = Date32Builder::with_capacity(n);
    let mut local_ts = TimestampMillisecondBuilder::with_capacity(n);
    let mut visitor = UInt64Builder::with_capacity(n);
    let mut name = strings(8);
    let mut pageview = BooleanBuilder::with_capacity(n);
    let mut page = strings(24);
    let mut host = strings(16);
    let mut prop_keys = ListBuilder::new(StringBuilder::new());
    let mut prop_values = ListBuilder::new(StringBuilder::new());
    let mut currency = StringBuilder::new();
    let mut micros = Int64Builder::with_capacity(n);
    let mut vid = UInt64Builder::with_capacity(n);
    let mut vfirst = BooleanBuilder::with_capacity(n);
    let mut vseq = Int64Builder::with_capacity(n);
    let mut vdate = Date32Builder::with_capacity(n);
    let mut vts = TimestampMillisecondBuilder::with_capacity(n);
    let mut vpv = Int64Builder::with_capacity(n);
    let mut vev = Int64Builder::with_capacity(n);
    let mut vbounce = BooleanBuilder::with_capacity(n);
    let mut vdur = Int64Builder::with_capacity(n);
    let mut ventry = strings(24);
    let mut vexit = strings(24);
    let mut ventry_host = strings(16);
    let mut vexit_host = strings(16);
    let mut attrs: Vec<StringBuilder> = VISIT_FIELDS.iter().map(|_| strings(8)).collect();
    for r in rows {
        let lt = clock.local_ms(r.timestamp);
        ts.append_value(r.timestamp);
        local_date.append_value(date_of_local_ms(lt));
        local_ts.append_value(lt);
        visitor.append_value(r.visitor);
        name.append_value(r.name);
        pageview.append_value(r.pageview);
        page.append_option(r.page.as_deref());
        host.append_option(r.hostname.as_deref());
        for (k, v) in &r.props {
            prop_keys.values().append_value(k);
            prop_values.values().append_value(v);
        }
        prop_keys.append(true);
        prop_values.append(true);
        match &r.revenue {
            Some((c, m)) => {
                currency.append_value(c);
                micros.append_value(*m);
            }
            None => {
                currency.append_null();
                micros.append_null();
            }
        }
        let v = &r.visit;
        let vt = visit_clock.local_ms(v.start);
        vid.append_value(visit_id(r.visitor, v.start));
        vfirst.append_value(r.visit_first);
        vseq.append_value(r.visit_seq as i64);
        vdate.append_value(date_of_local_ms(vt));
        vts.append_value(vt);
        vpv.append_value(v.pageviews as i64);
        vev.append_value(v.events as i64);
        vbounce.append_value(v.bounce);
        vdur.append_value(v.end - v.start);
        ventry.append_option(v.entry_page.as_deref());
        vexit.append_option(v.exit_page.as_deref());
        ventry_host.append_option(v.entry_hostname.as_deref());
        vexit_host.append_option(v.exit_hostname.as_deref());
        for (i, b) in attrs.iter_mut().enumerate() {
            b.append_value(VisitKey::field(&v.key, i));
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(local_date.finish()),
        Arc::new(local_ts.finish()),
        Arc::new(visitor.finish()),
        Arc::new(name.finish()),
        Arc::new(pageview.finish()),
        Arc::new(page.finish()),
        Arc::new(host.finish()),
        Arc::new(prop_keys.finish()),
        Arc::new(prop_values.finish()),
        Arc::new(currency.finish()),
        Arc::new(micros.finish()),
        Arc::new(vid.finish()),
        Arc::new(vfirst.finish()),
        Arc::new(vseq.finish()),
        Arc::new(vdate.finish()),
        Arc::new(vts.finish()),
        Arc::new(vpv.finish()),
        Arc::new(vev.finish()),
        Arc::new(vbounce.finish()),
        Arc::new(vdur.finish()),
        Arc::new(ventry.finish()),
        Arc::new(vexit.finish()),
        Arc::new(ventry_host.finish()),
        Arc::new(vexit_host.finish()),
    ];
    for mut b in attrs {
        cols.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered offsets give what converting each instant gives, across offset
    /// changes of whole-hour, half-hour and 45-minute zones, in time order and not.
    #[test]
    fn local_clock_equals_converting_each_instant() {
        let zones: [Tz; 5] = [
            chrono_tz::Europe::Berlin,
            chrono_tz::America::New_York,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::Asia::Kolkata,
        ];
        // Around each zone's changes of 2026, and a jump back in time now and then.
        let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
        for tz in &zones {
            let mut clock = LocalClock::new(tz);
            let mut ms = start;
            let mut k = 0u64;
            while ms < start + 366 * DAY_MS {
                let want = local_time(tz, ms).and_utc().timestamp_millis();
                assert_eq!(clock.local_ms(ms), want, "{tz} at {ms}");
                assert_eq!(
                    date_of_local_ms(want),
                    date32(local_time(tz, ms).date()),
                    "{tz} at {ms}"
                );
                k += 1;
                // Steps of about 7 minutes with a varying remainder, and every 50th
                // step back by 5 hours.
                ms += if k % 50 == 0 {
                    -5 * 3_600_000
                } else {
                    419_999 + (k % 7) as i64
                };
            }
        }
    }
}
