//! How records ride in Kafka messages: the records of one append that go to one
//! partition are packed into one message (a *frame*), so the broker, librdkafka and the
//! reader pay their per-message costs once per request and partition rather than once
//! per event (a batched request of 100 events over 2 partitions is 2 messages, not 100).
//!
//! A frame is `FORMAT` then, per record, `len: u32 LE | payload`. A record's [`Offset`]
//! is `kafka_offset << INDEX_BITS | index in its frame`, so offsets still grow strictly
//! with each record and a reader can start at any record it was given.

use bytes::Bytes;
use footfall_log::Offset;

/// The first byte of every frame: the layout version.
pub const FORMAT: u8 = 1;

/// Low bits of an offset that number a record inside its frame.
pub const INDEX_BITS: u32 = 20;

/// A frame is closed once its body reaches this: well under the brokers' default
/// largest message (1 MB), so that one request's frames are never refused for size.
pub const FRAME_BYTES: usize = 512 * 1024;

const MAX_RECORDS: usize = (1 << INDEX_BITS) - 1;

/// The offset of record `index` of the frame at Kafka offset `message`.
pub fn offset(message: i64, index: usize) -> Offset {
    ((message as u64) << INDEX_BITS) | index as u64
}

/// The Kafka offset and frame index an offset names.
pub fn split(offset: Offset) -> (i64, usize) {
    (
        (offset >> INDEX_BITS) as i64,
        (offset & ((1 << INDEX_BITS) - 1)) as usize,
    )
}

/// One message to produce: its partition, the body, and which of the append's records
/// it holds (in order).
#[derive(Debug)]
pub struct Frame {
    pub partition: u32,
    pub body: Vec<u8>,
    pub records: Vec<usize>,
}

/// Packs `records` into frames. Each partition's records keep their order, within and
/// across frames, and frames of one partition come out in the order of their records.
pub fn pack(records: &[(u32, Vec<u8>)], partitions: u32) -> Vec<Frame> {
    let mut open: Vec<Option<Frame>> = (0..partitions).map(|_| None).collect();
    let mut out = Vec::new();
    for (i, (p, payload)) in records.iter().enumerate() {
        let slot = &mut open[*p as usize];
        if let Some(f) = slot {
            if f.body.len() + 4 + payload.len() > FRAME_BYTES || f.records.len() == MAX_RECORDS {
                out.extend(slot.take());
            }
        }
        let f = slot.get_or_insert_with(|| Frame {
            partition: *p,
            body: vec![FORMAT],
            records: Vec::new(),
        });
        f.body
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.body.extend_from_slice(payload);
        f.records.push(i);
    }
    out.extend(open.into_iter().flatten());
    out
}

/// The records of one frame, as slices of `body` (no copy), or `None` if it is not a
/// frame of this format.
pub fn unpack(body: &Bytes) -> Option<Vec<Bytes>> {
    if body.first() != Some(&FORMAT) {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 1;
    while at < body.len() {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        if body.len() - at < len {
            return None;
        }
        out.push(body.slice(at..at + len));
        at += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packing_keeps_every_record_in_partition_order(
            recs in proptest::collection::vec((0u32..3, proptest::collection::vec(any::<u8>(), 0..40_000)), 0..60)
        ) {
            let frames = pack(&recs, 3);
            let mut seen = vec![Vec::new(); 3];
            for f in &frames {
                prop_assert!(f.body.len() <= FRAME_BYTES || f.records.len() == 1);
                let got = unpack(&Bytes::from(f.body.clone())).expect("a frame");
                prop_assert_eq!(got.len(), f.records.len());
                for (payload, &i) in got.iter().zip(&f.records) {
                    prop_assert_eq!(recs[i].0, f.partition);
                    prop_assert_eq!(&payload[..], &recs[i].1[..]);
                    seen[f.partition as usize].push(i);
                }
            }
            for (p, idx) in seen.iter().enumerate() {
                let want: Vec<usize> = (0..recs.len()).filter(|&i| recs[i].0 == p as u32).collect();
                prop_assert_eq!(idx, &want);
            }
        }
    }

    #[test]
    fn offsets_name_a_message_and_an_index() {
        assert_eq!(split(offset(7, 3)), (7, 3));
        assert!(offset(7, MAX_RECORDS) < offset(8, 0));
    }

    #[test]
    fn truncated_or_foreign_bodies_are_refused() {
        assert!(unpack(&Bytes::from_static(b"")).is_none());
        assert!(unpack(&Bytes::from_static(b"{\"json\":1}")).is_none());
        assert!(unpack(&Bytes::from_static(&[FORMAT, 5, 0, 0, 0, 1])).is_none());
        assert_eq!(unpack(&Bytes::from_static(&[FORMAT])).unwrap().len(), 0);
    }
}
