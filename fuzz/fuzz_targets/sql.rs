//! The SQL endpoint's input (`POST /api/v1/sql` bodies, and the statements of the
//! wire protocol): the statement is parsed and judged by `footfall_sqlguard` — the
//! HTTP rule (one read-only query, generic dialect) and the wire protocol's (PostgreSQL
//! dialect) — before any engine sees it. A JSON body gives its `sql`; other input is
//! taken as the statement itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sql = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) => match v.get("sql").and_then(|s| s.as_str()) {
            Some(s) => s.to_string(),
            None => return,
        },
        Err(_) => match std::str::from_utf8(data) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        },
    };
    let _ = footfall_sqlguard::check_select(&sql);
    if let Ok(statements) = footfall_sqlguard::parse_postgres(&sql) {
        for s in &statements {
            let _ = footfall_sqlguard::allowed(s);
        }
    }
});
