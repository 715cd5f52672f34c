//! Archive files (Avro object container files): the schema decoder and the rebuild's
//! file reader.
#![no_main]
use footfall_archive::{rebuild::decode_file, schema::decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let _ = decode_file(data.to_vec(), |_| true);
});
