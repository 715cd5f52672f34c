//! Embeds the enrichment rules fetched by `scripts/fetch-rules.sh` (uap-core, the
//! crawler patterns and the referrer hosts) so the binary needs no files at run time.
use std::path::PathBuf;

fn main() {
    let dir = std::env::var_os("FOOTFALL_RULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../target/rules")
        });
    println!("cargo:rerun-if-env-changed=FOOTFALL_RULES_DIR");
    for f in ["regexes.yaml", "crawler-user-agents.json", "referers.json"] {
        let p = dir.join(f);
        println!("cargo:rerun-if-changed={}", p.display());
        if !p.exists() {
            panic!(
                "enrichment rules missing: {} not found. Run scripts/fetch-rules.sh first \
                 (it fetches the pinned uap-core, crawler-user-agents and referer-parser \
                 data from npm and PyPI).",
                p.display()
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for f in ["regexes.yaml", "crawler-user-agents.json", "referers.json"] {
        std::fs::copy(dir.join(f), out.join(f)).expect("copying rules into OUT_DIR");
    }
}
