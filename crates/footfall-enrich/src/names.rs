//! Names of the geo codes the enrichment stores: `visit:country_name` and
//! `visit:region_name` (docs/METRICS.md) are these names of `visit:country` and
//! `visit:region`, found when a query asks (the codes are what is stored, so a name
//! corrected here corrects history).
//!
//! Countries: the Unicode CLDR's English short names (generated into
//! `country_names.rs`), since ISO 3166's formal ones ("Korea (Republic of)") are not
//! what a report should show. Regions: ISO 3166-2's names of subdivisions, from the
//! `rust_iso3166` crate. A code without a name answers itself; `(unknown)` stays.

use crate::country_names::COUNTRY_NAMES;

/// The English name of an ISO 3166-1 alpha-2 country code (`DE` → `Germany`).
pub fn country_name(code: &str) -> Option<&'static str> {
    COUNTRY_NAMES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| COUNTRY_NAMES[i].1)
}

/// The name of an ISO 3166-2 subdivision code (`DE-BE` → `Berlin`).
pub fn region_name(code: &str) -> Option<&'static str> {
    rust_iso3166::iso3166_2::from_code(code).map(|s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_codes() {
        assert!(COUNTRY_NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert_eq!(country_name("DE"), Some("Germany"));
        assert_eq!(country_name("KR"), Some("South Korea"));
        assert_eq!(country_name("US"), Some("United States"));
        assert_eq!(country_name("GB"), Some("United Kingdom"));
        assert_eq!(country_name("IN"), Some("India"));
        assert_eq!(country_name("(unknown)"), None);
        assert_eq!(country_name("ZZ"), None);
        assert_eq!(region_name("DE-BE"), Some("Berlin"));
        assert_eq!(region_name("US-CA"), Some("California"));
        assert_eq!(region_name("IN-KA"), Some("Karnātaka"));
        assert_eq!(region_name("XX-YY"), None);
    }
}
