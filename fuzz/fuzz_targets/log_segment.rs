//! Log segments as found on disk at open: the input is cut at each `0xFE 0xFE` into
//! records, each framed with a valid length and checksum (so that the fuzzer reaches
//! the records, not only the checksum), and the last piece follows unframed (a torn or
//! damaged tail). The log opens, recovers, and every record it returns is decoded.
#![no_main]
use footfall_event::LoggedEvent;
use footfall_log::{EventLog, FileLog, FileLogOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == [0xFE, 0xFE]) {
        pieces.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    let mut segment = Vec::new();
    for p in &pieces {
        segment.extend((p.len() as u32).to_le_bytes());
        segment.extend(crc32fast::hash(p).to_le_bytes());
        segment.extend_from_slice(p);
    }
    segment.extend_from_slice(rest);
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("p0000");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.join(format!("{:020}.seg", 0)), &segment).unwrap();
    let opts = FileLogOptions {
        partitions: 1,
        fsync: false,
        ..FileLogOptions::default()
    };
    let Ok(log) = FileLog::open(dir.path(), opts) else {
        return;
    };
    let mut from = log.start_offset(0);
    while let Ok(records) = log.read(0, from, 1 << 20) {
        let Some(last) = records.last() else { break };
        from = last.next;
        for r in &records {
            let _ = LoggedEvent::decode(&r.payload);
        }
    }
    log.close();
});
