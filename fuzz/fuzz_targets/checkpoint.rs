//! The rollup store's manifest (`CURRENT`) as found on disk at open, in both of its
//! formats (the first input byte chooses): the rest is framed with the format's magic
//! and a valid checksum, so that the fuzzer reaches the decoder; the store must open
//! or refuse with an error, never crash.
#![no_main]
use footfall_store::{RollupRead, SnapshotStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let magic: &[u8; 8] = if which & 1 == 0 {
        b"FFMANI03"
    } else {
        b"FFMANI02"
    };
    let mut file = magic.to_vec();
    file.extend_from_slice(body);
    file.extend(crc32fast::hash(body).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("CURRENT"), &file).unwrap();
    if let Ok(store) = SnapshotStore::open(dir.path()) {
        let _ = store.first_day("FF-FUZZ");
    }
});
