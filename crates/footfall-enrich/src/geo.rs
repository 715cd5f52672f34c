//! Geo lookup in a MaxMind-format (`.mmdb`) database: GeoIP2/GeoLite2 Country or City
//! (`country.iso_code`, `subdivisions[0].iso_code`, `city.names.en`) or the flat records
//! of DB-IP Lite (`country_code`). Only truncated addresses are ever looked up; at a /24
//! (IPv4) or /48 (IPv6) country is exact for practically all networks, city less so.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::UNKNOWN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 code, or [`UNKNOWN`].
    pub country: String,
    /// ISO 3166-2 subdivision (`US-CA`), or [`UNKNOWN`].
    pub region: String,
    /// City name (English), or [`UNKNOWN`].
    pub city: String,
}

impl Geo {
    pub fn unknown() -> Self {
        Geo {
            country: UNKNOWN.into(),
            region: UNKNOWN.into(),
            city: UNKNOWN.into(),
        }
    }
}

pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    subdivisions: Vec<Named<'a>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("geo database {}: {e}", path.display()))?;
        Ok(GeoDb { reader })
    }

    pub fn lookup(&self, ip: &str) -> Geo {
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return Geo::unknown();
        };
        let rec: Option<Record> = self
            .reader
            .lookup(addr)
            .ok()
            .and_then(|r| r.decode().ok().flatten());
        let Some(rec) = rec else {
            return Geo::unknown();
        };
        let country = rec
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(rec.country_code)
            .unwrap_or(UNKNOWN)
            .to_string();
        let region = match (rec.subdivisions.first().and_then(|s| s.iso_code), &country) {
            (Some(s), c) if c != UNKNOWN => format!("{c}-{s}"),
            _ => UNKNOWN.to_string(),
        };
        let city = rec
            .city
            .as_ref()
            .and_then(|c| c.names.get("en").copied())
            .unwrap_or(UNKNOWN)
            .to_string();
        Geo {
            country,
            region,
            city,
        }
    }
}
