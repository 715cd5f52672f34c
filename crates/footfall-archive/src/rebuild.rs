//! Reading archive files for a rebuild without materialising events.
//!
//! A rebuild needs every event of a range in log order per partition, so it must hold
//! them all before the first is processed. Holding them as owned structs cost ~1 GB per
//! 2 M events in separate string allocations (zeroing fresh pages and chasing pointers
//! dominated the profile). Instead each file's blocks are inflated into one buffer, an
//! index of (log offset, file, position) is sorted per partition, and each record is
//! decoded again, borrowing its strings from the buffer, at the moment it is processed.
//!
//! The decoder is written for the archive's own schemas (versions 1 and 2) rather than
//! taken from an Avro crate: serde-based readers produce owned values, and this path is
//! the inner loop of reprocessing. Files whose embedded schema is neither are refused
//! with a clear error (the general reader in [`crate::schema::decode`] still reads them).
//! Its output is checked against that general reader in the tests below.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::OnceLock;

use footfall_event::{EventView, PropValueView, RevenueView};

use crate::{Error, Result};

fn bad(what: &str) -> Error {
    Error::Avro(format!("archive file: {what}"))
}

/// A cursor over Avro binary data.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Result<i64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated number"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(bad("number longer than 10 bytes"))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.long()?).map_err(|_| bad("negative length"))?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| bad("truncated string"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| bad("string is not UTF-8"))
    }

    /// A `["null", T]` union: true when the value is present.
    fn present(&mut self) -> Result<bool> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("union branch out of range")),
        }
    }

    fn opt_string(&mut self) -> Result<Option<&'a str>> {
        Ok(if self.present()? {
            Some(self.string()?)
        } else {
            None
        })
    }

    fn double(&mut self) -> Result<f64> {
        let b = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| bad("truncated double"))?;
        self.pos += 8;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn boolean(&mut self) -> Result<bool> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| bad("truncated boolean"))?;
        self.pos += 1;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("boolean is neither 0 nor 1")),
        }
    }

    /// Avro map/array block counts: a negative count is followed by the block's size.
    fn block_count(&mut self) -> Result<usize> {
        let n = self.long()?;
        if n < 0 {
            self.long()?;
        }
        usize::try_from(n.unsigned_abs()).map_err(|_| bad("block count"))
    }

    /// An Avro map: calls `entry` once per key/value pair, over all blocks.
    fn map(&mut self, mut entry: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(());
            }
            for _ in 0..n {
                entry(self)?;
            }
        }
    }

    /// One archived event (schema version 1 or 2), with where it was in the log.
    fn event(&mut self, version: u8) -> Result<(EventView<'a>, u32, u64)> {
        let property = self.string()?;
        let received_at = self.long()?;
        let timestamp = self.long()?;
        let visitor = self.long()? as u64;
        let name = self.string()?;
        let url = self.opt_string()?;
        let referrer = self.opt_string()?;
        let title = self.opt_string()?;
        let mut props = BTreeMap::new();
        self.map(|c| {
            let key = c.string()?;
            let s = c.opt_string()?;
            let num = if c.present()? {
                Some(c.double()?)
            } else {
                None
            };
            let b = if c.present()? {
                Some(c.boolean()?)
            } else {
                None
            };
            // Exactly one is set when written; the first present wins otherwise, as the
            // general reader's conversion does.
            let v = match (s, num, b) {
                (Some(s), _, _) => PropValueView::Str(s),
                (None, Some(n), _) => PropValueView::Num(n),
                (None, None, Some(b)) => PropValueView::Bool(b),
                (None, None, None) => return Ok(()),
            };
            props.insert(key, v);
            Ok(())
        })?;
        let revenue = if self.present()? {
            let amount = self.double()?;
            let currency = self.string()?;
            Some(RevenueView { amount, currency })
        } else {
            None
        };
        let interactive = self.boolean()?;
        let user_agent = self.opt_string()?;
        let ip_prefix = self.opt_string()?;
        let partition = u32::try_from(self.long()?).map_err(|_| bad("log partition"))?;
        let offset = u64::try_from(self.long()?).map_err(|_| bad("log offset"))?;
        let server_side = version >= 2 && self.boolean()?;
        let view = EventView {
            property,
            received_at,
            timestamp,
            visitor,
            name,
            url,
            referrer,
            title,
            props,
            revenue,
            interactive,
            user_agent,
            ip_prefix,
            server_side,
        };
        Ok((view, partition, offset))
    }
}

/// The schemas as our writer embeds them in a file, by version, to recognise files.
fn known_schemas() -> &'static [(u8, serde_json::Value); 2] {
    static S: OnceLock<[(u8, serde_json::Value); 2]> = OnceLock::new();
    S.get_or_init(|| {
        let embedded = |schema: &serde_avro_fast::Schema| {
            let empty = crate::schema::encode_with::<()>(schema, &[])
                .expect("an empty archive file encodes");
            let (meta, _, _) = header(&empty).expect("our own header parses");
            let json = meta
                .get("avro.schema")
                .expect("the writer embeds its schema");
            serde_json::from_slice(json).expect("the embedded schema is JSON")
        };
        let v1: serde_avro_fast::Schema = crate::schema::v1_schema_json()
            .parse()
            .expect("the version-1 schema is valid");
        let v2: serde_avro_fast::Schema = crate::SCHEMA_JSON.parse().expect("the schema is valid");
        [(1, embedded(&v1)), (2, embedded(&v2))]
    })
}

/// A container file's metadata, sync marker, and where its blocks start.
type Header<'a> = (BTreeMap<&'a str, &'a [u8]>, [u8; 16], usize);

/// Parses the container header.
fn header(file: &[u8]) -> Result<Header<'_>> {
    if !file.starts_with(b"Obj\x01") {
        return Err(bad("not an Avro object container file"));
    }
    let mut c = Cursor { buf: file, pos: 4 };
    let mut meta = BTreeMap::new();
    c.map(|c| {
        let k = c.string()?;
        meta.insert(k, c.bytes()?);
        Ok(())
    })?;
    let sync = file
        .get(c.pos..c.pos + 16)
        .ok_or_else(|| bad("truncated header"))?;
    Ok((meta, sync.try_into().expect("16 bytes"), c.pos + 16))
}

/// Schema version and the (start, end, record count) of each block of a file.
type Blocks = (u8, Vec<(usize, usize, usize)>);

/// The record data of a version-1 or version-2 file, appended to `out` (inflated when
/// compressed); answers its schema version and where each block is in `out`.
fn inflate_into(file: &[u8], out: &mut Vec<u8>) -> Result<Blocks> {
    let (meta, sync, mut pos) = header(file)?;
    let schema: serde_json::Value = meta
        .get("avro.schema")
        .and_then(|s| serde_json::from_slice(s).ok())
        .ok_or_else(|| bad("no schema in the header"))?;
    let Some(&(version, _)) = known_schemas().iter().find(|(_, s)| *s == schema) else {
        return Err(bad(
            "written with a schema other than versions 1 and 2, which this reader does not know",
        ));
    };
    let deflate = match meta.get("avro.codec").copied() {
        None | Some(b"null") => false,
        Some(b"deflate") => true,
        Some(other) => {
            return Err(bad(&format!(
                "unsupported codec {}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let mut blocks = Vec::new();
    while pos < file.len() {
        let mut c = Cursor { buf: file, pos };
        let count = usize::try_from(c.long()?).map_err(|_| bad("block count"))?;
        let block = c.bytes()?;
        if file.get(c.pos..c.pos + 16) != Some(&sync[..]) {
            return Err(bad("block does not end with the file's sync marker"));
        }
        pos = c.pos + 16;
        let start = out.len();
        if deflate {
            flate2::read::DeflateDecoder::new(block)
                .read_to_end(out)
                .map_err(|e| bad(&format!("deflate: {e}")))?;
        } else {
            out.extend_from_slice(block);
        }
        blocks.push((start, out.len(), count));
    }
    if u32::try_from(out.len()).is_err() {
        return Err(bad("more than 4 GiB of records in one file"));
    }
    Ok((version, blocks))
}

/// One archive file, checked and indexed: its bytes as stored (inflated again when
/// processed, into reused buffers, which costs less than holding every file inflated:
/// on this path fresh memory pages cost more than inflating) and where each kept
/// record is in its inflated data.
pub struct DecodedFile {
    bytes: Vec<u8>,
    version: u8,
    /// (log partition, log offset, position in the inflated data) per kept record.
    records: Vec<(u32, u64, u32)>,
    /// Records in the file, kept or not.
    pub total: u64,
}

/// Checks and indexes one version-1 archive file, keeping records whose event time
/// passes `keep`. Every record is fully decoded here, so [`RebuildInput::for_each`]
/// cannot meet a malformed one later.
pub fn decode_file(file: Vec<u8>, keep: impl Fn(i64) -> bool) -> Result<DecodedFile> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut data = buf.borrow_mut();
        data.clear();
        let (version, blocks) = inflate_into(&file, &mut data)?;
        let mut records = Vec::new();
        let mut total = 0u64;
        for (start, end, count) in blocks {
            let mut c = Cursor {
                buf: &data[..end],
                pos: start,
            };
            for _ in 0..count {
                let at = c.pos as u32;
                let (e, partition, offset) = c.event(version)?;
                if keep(e.timestamp) {
                    records.push((partition, offset, at));
                }
                total += 1;
            }
            if c.pos != end {
                return Err(bad("block longer than its records"));
            }
        }
        if data.capacity() > 64 << 20 {
            *data = Vec::new(); // an unusually large file: do not keep its buffer
        }
        Ok(DecodedFile {
            bytes: file,
            version,
            records,
            total,
        })
    })
}

/// Every kept event of a rebuild, per log partition in log order, decoded on demand.
#[derive(Default)]
pub struct RebuildInput {
    /// Each file's bytes and schema version.
    files: Vec<(Vec<u8>, u8)>,
    /// Per partition: (log offset, file, position), sorted by offset.
    order: Vec<Vec<(u64, u32, u32)>>,
}

impl RebuildInput {
    pub fn new(partitions: usize) -> Self {
        Self {
            files: Vec::new(),
            order: vec![Vec::new(); partitions],
        }
    }

    /// Adds a decoded file. Records of partitions beyond `partitions` are dropped (the
    /// log cannot shrink, so they do not occur).
    pub fn push(&mut self, f: DecodedFile) {
        let file = self.files.len() as u32;
        for (p, offset, at) in f.records {
            if let Some(v) = self.order.get_mut(p as usize) {
                v.push((offset, file, at));
            }
        }
        self.files.push((f.bytes, f.version));
    }

    /// Puts each partition in log order; call once after the last [`Self::push`].
    pub fn sort(&mut self) {
        for v in &mut self.order {
            v.sort_unstable_by_key(|r| r.0);
        }
    }

    pub fn partitions(&self) -> usize {
        self.order.len()
    }

    /// Events kept, over all partitions.
    pub fn len(&self) -> usize {
        self.order.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with partition `p`'s events in log order. A file is inflated when its
    /// first record is due and its buffer reused once its last one is done; files of a
    /// partition overlap in offsets only within one archiver batch, so few are open.
    pub fn for_each(&self, p: usize, f: &mut dyn FnMut(&EventView<'_>)) {
        let order = self.order.get(p).map(Vec::as_slice).unwrap_or(&[]);
        let mut left = vec![0u32; self.files.len()];
        for &(_, file, _) in order {
            left[file as usize] += 1;
        }
        let mut open: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        for &(_, file, at) in order {
            let data = open.entry(file).or_insert_with(|| {
                let mut buf = spare.pop().unwrap_or_default();
                buf.clear();
                inflate_into(&self.files[file as usize].0, &mut buf)
                    .expect("files are validated when indexed");
                buf
            });
            let mut c = Cursor {
                buf: data,
                pos: at as usize,
            };
            let version = self.files[file as usize].1;
            let (e, _, _) = c
                .event(version)
                .expect("records are validated when indexed");
            f(&e);
            left[file as usize] -= 1;
            if left[file as usize] == 0 {
                spare.extend(open.remove(&file));
            }
        }
    }

    /// Partition `p`'s log offsets in order (for checks).
    #[cfg(test)]
    fn offsets(&self, p: usize) -> impl Iterator<Item = u64> + '_ {
        self.order[p].iter().map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{decode, encode, ArchivedEvent};
    use footfall_event::{LoggedEvent, PropValue, Revenue};
    use proptest::prelude::*;

    fn event(i: u64, props: Vec<(String, PropValue)>, revenue: Option<f64>) -> LoggedEvent {
        LoggedEvent {
            property: "FF-A".into(),
            received_at: 1_795_600_000_000 + i as i64,
            timestamp: 1_795_599_000_000 + i as i64 * 7,
            visitor: u64::MAX - i,
            name: if i % 3 == 0 { "pageview" } else { "Signup" }.into(),
            url: (i % 5 != 0).then(|| format!("https://a.example/p/{i}?utm_source=x")),
            referrer: (i % 2 == 0).then(|| "https://google.com/".into()),
            title: (i % 4 == 0).then(|| "Tïtle ✓".into()),
            props: props.into_iter().collect(),
            revenue: revenue.map(|amount| Revenue {
                amount,
                currency: "EUR".into(),
            }),
            interactive: i % 7 != 0,
            user_agent: (i % 6 != 0).then(|| "Mozilla/5.0 (X11; Linux x86_64)".into()),
            ip_prefix: (i % 3 != 1).then(|| "203.0.113.0".into()),
            server_side: i % 5 == 2,
        }
    }

    /// The fast reader sees exactly what the general serde-based reader decodes.
    /// The events are spread over three files whose offsets interleave, as the files of
    /// one archiver batch do.
    fn check_same(archived: &[ArchivedEvent]) {
        let mut input = RebuildInput::new(4);
        let mut general = Vec::new();
        for k in 0..3 {
            let part: Vec<ArchivedEvent> = archived.iter().skip(k).step_by(3).cloned().collect();
            let bytes = encode(&part).unwrap();
            general.extend(decode(&bytes).unwrap());
            let f = decode_file(bytes, |_| true).unwrap();
            assert_eq!(f.total as usize, part.len());
            input.push(f);
        }
        input.sort();
        let mut seen = Vec::new();
        for p in 0..4 {
            let offsets: Vec<u64> = input.offsets(p).collect();
            let mut i = 0;
            input.for_each(p, &mut |v| {
                seen.push((p as i32, offsets[i] as i64, format!("{v:?}")));
                i += 1;
            });
        }
        let mut want: Vec<_> = general
            .into_iter()
            .map(|a| {
                let (p, o) = (a.log_partition, a.log_offset);
                (p, o, format!("{:?}", a.into_logged().view()))
            })
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn same_views_as_the_general_reader_over_many_blocks() {
        // Enough events for the writer to cut several blocks.
        let archived: Vec<ArchivedEvent> = (0..20_000u64)
            .map(|i| {
                let props = match i % 4 {
                    0 => vec![],
                    1 => vec![("plan".into(), PropValue::Str("pro".into()))],
                    2 => vec![
                        ("n".into(), PropValue::Num(2.5)),
                        ("b".into(), PropValue::Bool(true)),
                    ],
                    _ => vec![("b".into(), PropValue::Bool(false))],
                };
                let revenue = (i % 9 == 0).then_some(12.25);
                // Offsets are not in file order within a partition, as after a merge.
                let offset = (20_000 - i) * 3;
                ArchivedEvent::from_logged(&event(i, props, revenue), (i % 3) as u32, offset)
            })
            .collect();
        check_same(&archived);
    }

    /// Files written before version 2 (no `server_side`) read through both readers, their
    /// events taken as not server-side.
    #[test]
    fn version_1_files_still_read() {
        #[derive(serde::Serialize)]
        struct V1 {
            property: String,
            received_at: i64,
            timestamp: i64,
            visitor: i64,
            name: String,
            url: Option<String>,
            referrer: Option<String>,
            title: Option<String>,
            props: BTreeMap<String, crate::schema::ArchivedProp>,
            revenue: Option<crate::schema::ArchivedRevenue>,
            interactive: bool,
            user_agent: Option<String>,
            ip_prefix: Option<String>,
            log_partition: i32,
            log_offset: i64,
        }
        let now: Vec<ArchivedEvent> = (0..50u64)
            .map(|i| {
                let mut e = event(i, vec![], (i % 4 == 0).then_some(3.5));
                e.server_side = false;
                ArchivedEvent::from_logged(&e, (i % 2) as u32, i)
            })
            .collect();
        let old: Vec<V1> = now
            .iter()
            .cloned()
            .map(|a| V1 {
                property: a.property,
                received_at: a.received_at,
                timestamp: a.timestamp,
                visitor: a.visitor,
                name: a.name,
                url: a.url,
                referrer: a.referrer,
                title: a.title,
                props: a.props,
                revenue: a.revenue,
                interactive: a.interactive,
                user_agent: a.user_agent,
                ip_prefix: a.ip_prefix,
                log_partition: a.log_partition,
                log_offset: a.log_offset,
            })
            .collect();
        let v1: serde_avro_fast::Schema = crate::schema::v1_schema_json().parse().unwrap();
        let bytes = crate::schema::encode_with(&v1, &old).unwrap();
        assert_eq!(decode(&bytes).unwrap(), now);
        let f = decode_file(bytes, |_| true).unwrap();
        assert_eq!((f.version, f.total), (1, 50));
        let mut input = RebuildInput::new(2);
        input.push(f);
        input.sort();
        let mut seen = 0;
        input.for_each(1, &mut |v| {
            assert!(!v.server_side);
            seen += 1;
        });
        assert_eq!(seen, 25);
    }

    #[test]
    fn keeps_only_what_passes_and_refuses_other_files() {
        let archived: Vec<ArchivedEvent> = (0..100u64)
            .map(|i| ArchivedEvent::from_logged(&event(i, vec![], None), 0, i))
            .collect();
        let bytes = encode(&archived).unwrap();
        let cut = archived[50].timestamp;
        let f = decode_file(bytes.clone(), |t| t >= cut).unwrap();
        assert_eq!((f.total, f.records.len()), (100, 50));
        assert!(decode_file(b"PK\x03\x04".to_vec(), |_| true).is_err());
        // A flipped byte in the sync marker or a truncated file is an error, not a panic.
        let mut broken = bytes.clone();
        let n = broken.len();
        broken[n - 3] ^= 0xff;
        assert!(decode_file(broken, |_| true).is_err());
        assert!(decode_file(bytes[..n - 40].to_vec(), |_| true).is_err());
    }

    fn prop_value() -> impl Strategy<Value = PropValue> {
        prop_oneof![
            "\\PC{0,12}".prop_map(PropValue::Str),
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |n| !n.is_nan())
                .prop_map(PropValue::Num),
            any::<bool>().prop_map(PropValue::Bool),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_events_read_the_same(
            rows in prop::collection::vec(
                (
                    any::<u64>(),
                    prop::collection::vec(("\\PC{0,8}", prop_value()), 0..4),
                    prop::option::of(any::<i32>()),
                    "\\PC{0,40}",
                    0u32..4,
                ),
                1..40,
            )
        ) {
            let archived: Vec<ArchivedEvent> = rows
                .into_iter()
                .enumerate()
                .map(|(o, (i, props, rev, ua, p))| {
                    let mut e = event(i % 1000, props, rev.map(f64::from));
                    e.visitor = i;
                    e.user_agent = Some(ua);
                    ArchivedEvent::from_logged(&e, p, o as u64)
                })
                .collect();
            check_same(&archived);
        }
    }
}
