//! `footfall import` access-log lines in each format (a TSV header first when given).
#![no_main]
use footfall_import::{parse_line, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Combined, Format::Common, Format::Tsv] {
        let mut tsv = None;
        for line in s.lines() {
            let _ = parse_line(line, format, &mut tsv);
        }
    }
});
