//! A resident table: the rows of a set of day files, decoded once into memory with
//! every text column as dictionary codes, sorted by visitor, visit and place in the
//! visit, with the visit's attributes kept once per visit.
//!
//! The order is what makes the executor fast: a visitor's rows are contiguous, so an
//! exact count of distinct visitors per group is "is this row's visitor the last one
//! this group saw" (no hash set), and a visit's rows are contiguous and in time order,
//! so `has_done` and funnels are one pass over each visit.

use std::collections::HashMap;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Date32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use footfall_store::VISIT_FIELDS;

use crate::table::column_of;
use crate::{Error, Result};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The text columns kept once per visit, in this order: the entry and exit pages and
/// their hostnames, then [`VISIT_FIELDS`].
pub(crate) const VISIT_TEXT: [&str; 4] = [
    "visit_entry_page",
    "visit_exit_page",
    "visit_entry_page_hostname",
    "visit_exit_page_hostname",
];

/// Distinct strings of one column; code 0 is NULL.
#[derive(Default)]
pub(crate) struct Dict {
    pub values: Vec<Box<str>>,
    index: Map<Box<str>, u32>,
}

impl Dict {
    fn new() -> Self {
        Self {
            // Code 0 stands for NULL and has no string.
            values: vec!["".into()],
            index: Map::default(),
        }
    }

    fn code(&mut self, s: Option<&str>) -> u32 {
        let Some(s) = s else { return 0 };
        if let Some(c) = self.index.get(s) {
            return *c;
        }
        let c = self.values.len() as u32;
        self.values.push(s.into());
        self.index.insert(s.into(), c);
        c
    }

    /// The code of `s` if it occurs.
    pub fn find(&self, s: &str) -> Option<u32> {
        self.index.get(s).copied()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    fn bytes(&self) -> usize {
        self.values.iter().map(|v| v.len() * 2 + 40).sum()
    }
}

/// A set of day files' rows in memory.
pub(crate) struct Table {
    // One entry per row, in (visitor, visit, place in the visit) order.
    pub row_visit: Vec<u32>,
    pub row_ts: Vec<i64>,
    pub row_local: Vec<i64>,
    pub row_pageview: Vec<bool>,
    pub row_name: Vec<u32>,
    pub row_page: Vec<u32>,
    pub row_host: Vec<u32>,
    /// Revenue: the currency's code (0: none) and the amount in millionths.
    pub row_currency: Vec<u32>,
    pub row_micros: Vec<i64>,
    /// The row's custom properties are `props[prop_at[r]..prop_at[r + 1]]`, (key, value)
    /// codes in the event's order.
    pub prop_at: Vec<u32>,
    pub props: Vec<(u32, u32)>,
    // One entry per visit, in the rows' order.
    /// A number per visitor, increasing with the rows' order.
    pub visit_visitor: Vec<u32>,
    /// The visit's rows are `visit_rows[v]..visit_rows[v + 1]`.
    pub visit_rows: Vec<u32>,
    /// The visit's first row (`visit_first`) is in the table.
    pub visit_has_first: Vec<bool>,
    pub visit_date: Vec<i32>,
    pub visit_local: Vec<i64>,
    pub visit_pageviews: Vec<i64>,
    pub visit_events: Vec<i64>,
    pub visit_bounce: Vec<bool>,
    pub visit_duration: Vec<i64>,
    /// Codes of [`VISIT_TEXT`] then [`VISIT_FIELDS`], one vector per column.
    pub visit_text: Vec<Vec<u32>>,
    pub names: Dict,
    pub pages: Dict,
    pub hosts: Dict,
    pub prop_keys: Dict,
    pub prop_values: Dict,
    pub currencies: Dict,
    pub visit_dicts: Vec<Dict>,
    /// Approximate bytes held.
    pub bytes: usize,
}

/// Rows as read, before sorting.
struct Raw {
    visitor: Vec<u64>,
    visit: Vec<u32>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    local: Vec<i64>,
    pageview: Vec<bool>,
    name: Vec<u32>,
    page: Vec<u32>,
    host: Vec<u32>,
    currency: Vec<u32>,
    micros: Vec<i64>,
    prop_at: Vec<u32>,
    props: Vec<(u32, u32)>,
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Other(format!("columnar file: column {name} missing or retyped")))
}

/// A text column as `Option<&str>` per row, whichever string layout the reader chose.
fn texts<'a>(b: &'a RecordBatch, name: &str) -> Result<Box<dyn Fn(usize) -> Option<&'a str> + 'a>> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| Error::Other(format!("columnar file: column {name} missing")))?;
    Ok(match c.data_type() {
        DataType::Utf8 => {
            let a: &StringArray = c.as_string::<i32>();
            Box::new(move |r| (!a.is_null(r)).then(|| a.value(r)))
        }
        DataType::Utf8View => {
            let a = c.as_string_view();
            Box::new(move |r| (!a.is_null(r)).then(|| a.value(r)))
        }
        DataType::LargeUtf8 => {
            let a = c.as_string::<i64>();
            Box::new(move |r| (!a.is_null(r)).then(|| a.value(r)))
        }
        t => return Err(Error::Other(format!("columnar file: column {name} is {t}"))),
    })
}

impl Table {
    /// Decodes and sorts the rows of the Parquet files given (whole files' bytes).
    pub fn build(files: &[bytes::Bytes]) -> Result<Table> {
        let mut names = Dict::new();
        let mut pages = Dict::new();
        let mut hosts = Dict::new();
        let mut prop_keys = Dict::new();
        let mut prop_values = Dict::new();
        let mut currencies = Dict::new();
        let visit_cols: Vec<String> = VISIT_TEXT
            .iter()
            .map(|s| s.to_string())
            .chain(VISIT_FIELDS.iter().map(|f| column_of(f)))
            .collect();
        let mut visit_dicts: Vec<Dict> = visit_cols.iter().map(|_| Dict::new()).collect();
        let mut raw = Raw {
            visitor: Vec::new(),
            visit: Vec::new(),
            seq: Vec::new(),
            ts: Vec::new(),
            local: Vec::new(),
            pageview: Vec::new(),
            name: Vec::new(),
            page: Vec::new(),
            host: Vec::new(),
            currency: Vec::new(),
            micros: Vec::new(),
            prop_at: vec![0],
            props: Vec::new(),
        };
        // Visits by id, as first read (a visit across midnight is in two files).
        let mut visit_of: Map<u64, u32> = Map::default();
        let mut v_first: Vec<bool> = Vec::new();
        let mut v_date: Vec<i32> = Vec::new();
        let mut v_local: Vec<i64> = Vec::new();
        let mut v_pv: Vec<i64> = Vec::new();
        let mut v_ev: Vec<i64> = Vec::new();
        let mut v_bounce: Vec<bool> = Vec::new();
        let mut v_dur: Vec<i64> = Vec::new();
        let mut v_text: Vec<Vec<u32>> = visit_cols.iter().map(|_| Vec::new()).collect();
        // Parquet is decoded on a thread of its own while this one makes the codes.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(4);
        let decoder = {
            let files = files.to_vec();
            std::thread::spawn(move || {
                for bytes in files {
                    let reader = match ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .and_then(|b| b.with_batch_size(64 * 1024).build())
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    for batch in reader {
                        if tx.send(batch.map_err(Into::into)).is_err() {
                            return;
                        }
                    }
                }
            })
        };
        {
            for batch in rx.iter() {
                let b = batch?;
                let n = b.num_rows();
                let ts = col::<Int64Array>(&b, "ts")?;
                let local = col::<TimestampMillisecondArray>(&b, "local_ts")?;
                let visitor = col::<UInt64Array>(&b, "visitor")?;
                let name = texts(&b, "event_name")?;
                let pageview = col::<BooleanArray>(&b, "pageview")?;
                let page = texts(&b, "event_page")?;
                let host = texts(&b, "event_hostname")?;
                let currency = texts(&b, "revenue_currency")?;
                let micros = col::<Int64Array>(&b, "revenue_micros")?;
                let pk = col::<ListArray>(&b, "prop_keys")?;
                let pv = col::<ListArray>(&b, "prop_values")?;
                let vid = col::<UInt64Array>(&b, "visit_id")?;
                let vfirst = col::<BooleanArray>(&b, "visit_first")?;
                let vseq = col::<Int64Array>(&b, "visit_seq")?;
                let vdate = col::<Date32Array>(&b, "visit_local_date")?;
                let vlocal = col::<TimestampMillisecondArray>(&b, "visit_local_ts")?;
                let vpv = col::<Int64Array>(&b, "visit_pageviews")?;
                let vev = col::<Int64Array>(&b, "visit_events")?;
                let vbounce = col::<BooleanArray>(&b, "visit_bounce")?;
                let vdur = col::<Int64Array>(&b, "visit_duration_ms")?;
                let vtexts = visit_cols
                    .iter()
                    .map(|c| texts(&b, c))
                    .collect::<Result<Vec<_>>>()?;
                let pk_values = pk.values();
                let pv_values = pv.values();
                let pk_strings = pk_values.as_string_opt::<i32>();
                let pv_strings = pv_values.as_string_opt::<i32>();
                // Consecutive rows mostly repeat a name, page and host.
                let mut last_name: (Option<&str>, u32) = (None, 0);
                let mut last_visit = (u64::MAX, 0u32);
                for r in 0..n {
                    let id = vid.value(r);
                    let v = if last_visit.0 == id {
                        last_visit.1
                    } else {
                        let next = v_first.len() as u32;
                        let v = *visit_of.entry(id).or_insert(next);
                        if v == next {
                            v_first.push(false);
                            v_date.push(vdate.value(r));
                            v_local.push(vlocal.value(r));
                            v_pv.push(vpv.value(r));
                            v_ev.push(vev.value(r));
                            v_bounce.push(vbounce.value(r));
                            v_dur.push(vdur.value(r));
                            for (i, t) in vtexts.iter().enumerate() {
                                v_text[i].push(visit_dicts[i].code(t(r)));
                            }
                        }
                        last_visit = (id, v);
                        v
                    };
                    if vfirst.value(r) {
                        v_first[v as usize] = true;
                    }
                    raw.visitor.push(visitor.value(r));
                    raw.visit.push(v);
                    raw.seq.push(vseq.value(r));
                    raw.ts.push(ts.value(r));
                    raw.local.push(local.value(r));
                    raw.pageview.push(pageview.value(r));
                    let nm = name(r);
                    if nm.is_none() || nm != last_name.0 {
                        last_name = (nm, names.code(nm));
                    }
                    raw.name.push(last_name.1);
                    raw.page.push(pages.code(page(r)));
                    raw.host.push(hosts.code(host(r)));
                    let c = if micros.is_null(r) {
                        0
                    } else {
                        currencies.code(currency(r))
                    };
                    raw.currency.push(c);
                    raw.micros.push(if c == 0 { 0 } else { micros.value(r) });
                    if let (Some(ks), Some(vs)) = (pk_strings, pv_strings) {
                        let (a, z) = (pk.value_offsets()[r], pk.value_offsets()[r + 1]);
                        let va = pv.value_offsets()[r];
                        for (j, i) in (a..z).enumerate() {
                            let k = prop_keys.code(Some(ks.value(i as usize)));
                            let vi = (va as usize) + j;
                            let val = if vs.is_null(vi) {
                                0
                            } else {
                                prop_values.code(Some(vs.value(vi)))
                            };
                            raw.props.push((k, val));
                        }
                    }
                    raw.prop_at.push(raw.props.len() as u32);
                }
            }
        }
        decoder
            .join()
            .map_err(|_| Error::Other("decoding a columnar file panicked".into()))?;
        // Sort: by visitor, then visit (its number as first read), then place in it.
        let n = raw.visitor.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let i = i as usize;
            (raw.visitor[i], raw.visit[i], raw.seq[i])
        });
        let pick = |v: &Vec<i64>| order.iter().map(|&i| v[i as usize]).collect::<Vec<_>>();
        let pick32 = |v: &Vec<u32>| order.iter().map(|&i| v[i as usize]).collect::<Vec<_>>();
        let row_ts = pick(&raw.ts);
        let row_local = pick(&raw.local);
        let row_pageview: Vec<bool> = order.iter().map(|&i| raw.pageview[i as usize]).collect();
        let row_name = pick32(&raw.name);
        let row_page = pick32(&raw.page);
        let row_host = pick32(&raw.host);
        let row_currency = pick32(&raw.currency);
        let row_micros = pick(&raw.micros);
        let mut prop_at = Vec::with_capacity(n + 1);
        let mut props = Vec::with_capacity(raw.props.len());
        prop_at.push(0u32);
        for &i in &order {
            let (a, z) = (raw.prop_at[i as usize], raw.prop_at[i as usize + 1]);
            props.extend_from_slice(&raw.props[a as usize..z as usize]);
            prop_at.push(props.len() as u32);
        }
        // Visits renumbered in the rows' order; visitors numbered by their runs.
        let visits = v_first.len();
        let mut renumber = vec![u32::MAX; visits];
        let mut old_of_new: Vec<u32> = Vec::with_capacity(visits);
        let mut visit_rows: Vec<u32> = Vec::with_capacity(visits + 1);
        let mut visit_visitor: Vec<u32> = Vec::with_capacity(visits);
        let mut row_visit = Vec::with_capacity(n);
        let mut visitor_run = 0u32;
        let mut last: Option<(u64, u32)> = None;
        for (r, &i) in order.iter().enumerate() {
            let (who, old) = (raw.visitor[i as usize], raw.visit[i as usize]);
            if last.map(|l| l.1) != Some(old) {
                if last.is_some_and(|l| l.0 != who) {
                    visitor_run += 1;
                }
                renumber[old as usize] = old_of_new.len() as u32;
                old_of_new.push(old);
                visit_rows.push(r as u32);
                visit_visitor.push(visitor_run);
            }
            last = Some((who, old));
            row_visit.push(renumber[old as usize]);
        }
        visit_rows.push(n as u32);
        let by_new = |v: &Vec<i64>| {
            old_of_new
                .iter()
                .map(|&o| v[o as usize])
                .collect::<Vec<_>>()
        };
        let visit_text: Vec<Vec<u32>> = v_text
            .iter()
            .map(|c| old_of_new.iter().map(|&o| c[o as usize]).collect())
            .collect();
        let mut t = Table {
            row_visit,
            row_ts,
            row_local,
            row_pageview,
            row_name,
            row_page,
            row_host,
            row_currency,
            row_micros,
            prop_at,
            props,
            visit_visitor,
            visit_rows,
            visit_has_first: old_of_new.iter().map(|&o| v_first[o as usize]).collect(),
            visit_date: old_of_new.iter().map(|&o| v_date[o as usize]).collect(),
            visit_local: by_new(&v_local),
            visit_pageviews: by_new(&v_pv),
            visit_events: by_new(&v_ev),
            visit_bounce: old_of_new.iter().map(|&o| v_bounce[o as usize]).collect(),
            visit_duration: by_new(&v_dur),
            visit_text,
            names,
            pages,
            hosts,
            prop_keys,
            prop_values,
            currencies,
            visit_dicts,
            bytes: 0,
        };
        t.bytes = t.size();
        Ok(t)
    }

    pub fn rows(&self) -> usize {
        self.row_visit.len()
    }

    pub fn visits(&self) -> usize {
        self.visit_visitor.len()
    }

    fn size(&self) -> usize {
        let rows = self.rows() * (4 + 8 + 8 + 1 + 4 + 4 + 4 + 4 + 4 + 8);
        let visits =
            self.visits() * (4 + 4 + 1 + 4 + 8 + 8 + 8 + 1 + 8 + 4 * self.visit_text.len());
        let dicts: usize = [
            &self.names,
            &self.pages,
            &self.hosts,
            &self.prop_keys,
            &self.prop_values,
        ]
        .iter()
        .map(|d| d.bytes())
        .sum::<usize>()
            + self.visit_dicts.iter().map(Dict::bytes).sum::<usize>();
        rows + visits + self.props.len() * 8 + dicts
    }
}
