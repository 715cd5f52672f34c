//! The archive's Avro schema (versioned; documented in docs/ARCHIVE.md) and the record
//! type written with it. The schema is parsed once per process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use footfall_event::{LoggedEvent, PropValue, Revenue};
use serde::{Deserialize, Serialize};
use serde_avro_fast::object_container_file_encoding::{
    Compression, CompressionLevel, Reader, WriterBuilder,
};
use serde_avro_fast::ser::SerializerConfig;
use serde_avro_fast::Schema;

use crate::{Error, Result};

/// Bumped on any change to [`SCHEMA_JSON`]. Each file carries the schema itself in its
/// header (`avro.schema`), by which the rebuild reader recognises versions 1 and 2.
pub const SCHEMA_VERSION: u32 = 2;

/// Avro schema of an archived event (version 2: version 1 and `server_side`, last, with
/// a default, so that readers given either schema read files of both).
pub const SCHEMA_JSON: &str = r#"{
  "type": "record",
  "name": "Event",
  "namespace": "dev.footfall.archive.v1",
  "doc": "One accepted event as the collector made it durable, before enrichment. No full IP address.",
  "fields": [
    {"name": "property", "type": "string", "doc": "Tracking id (FF-...)"},
    {"name": "received_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "Server receive time, UTC"},
    {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "Event time, UTC"},
    {"name": "visitor", "type": "long", "doc": "Visitor id: an unsigned 64-bit keyed hash stored as its two's-complement long"},
    {"name": "name", "type": "string", "doc": "Event name; pageview is a page view"},
    {"name": "url", "type": ["null", "string"], "default": null},
    {"name": "referrer", "type": ["null", "string"], "default": null},
    {"name": "title", "type": ["null", "string"], "default": null},
    {"name": "props", "type": {"type": "map", "values": {
      "type": "record", "name": "PropValue", "doc": "Exactly one field is set",
      "fields": [
        {"name": "string", "type": ["null", "string"], "default": null},
        {"name": "number", "type": ["null", "double"], "default": null},
        {"name": "boolean", "type": ["null", "boolean"], "default": null}
      ]}}},
    {"name": "revenue", "type": ["null", {"type": "record", "name": "Revenue", "fields": [
      {"name": "amount", "type": "double"},
      {"name": "currency", "type": "string", "doc": "ISO 4217"}
    ]}], "default": null},
    {"name": "interactive", "type": "boolean"},
    {"name": "user_agent", "type": ["null", "string"], "default": null},
    {"name": "ip_prefix", "type": ["null", "string"], "default": null, "doc": "Client address truncated to /24 (IPv4) or /48 (IPv6)"},
    {"name": "log_partition", "type": "int", "doc": "Log partition the event was read from"},
    {"name": "log_offset", "type": "long", "doc": "Its offset in that partition: (log_partition, log_offset) is unique"},
    {"name": "server_side", "type": "boolean", "default": false, "doc": "Sent with a write key by the merchant's server for a person it identified (counted whatever its user agent); added in version 2"}
  ]
}"#;

/// The schema of version 1, which files written before version 2 embed.
pub(crate) fn v1_schema_json() -> String {
    let cut = SCHEMA_JSON
        .find(",\n    {\"name\": \"server_side\"")
        .expect("version 2 appends server_side");
    let end = SCHEMA_JSON.rfind("\n  ]").expect("the field list ends");
    format!("{}{}", &SCHEMA_JSON[..cut], &SCHEMA_JSON[end..])
}

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| SCHEMA_JSON.parse().expect("the archive schema is valid"))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchivedProp {
    pub string: Option<String>,
    pub number: Option<f64>,
    pub boolean: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedRevenue {
    pub amount: f64,
    pub currency: String,
}

/// One archived event (field order = schema order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub property: String,
    pub received_at: i64,
    pub timestamp: i64,
    pub visitor: i64,
    pub name: String,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub title: Option<String>,
    pub props: BTreeMap<String, ArchivedProp>,
    pub revenue: Option<ArchivedRevenue>,
    pub interactive: bool,
    pub user_agent: Option<String>,
    pub ip_prefix: Option<String>,
    pub log_partition: i32,
    pub log_offset: i64,
    /// Absent from version-1 files, which read as `false`.
    #[serde(default)]
    pub server_side: bool,
}

impl ArchivedEvent {
    pub fn from_logged(e: &LoggedEvent, partition: u32, offset: u64) -> Self {
        Self {
            property: e.property.clone(),
            received_at: e.received_at,
            timestamp: e.timestamp,
            visitor: e.visitor as i64,
            name: e.name.clone(),
            url: e.url.clone(),
            referrer: e.referrer.clone(),
            title: e.title.clone(),
            props: e
                .props
                .iter()
                .map(|(k, v)| {
                    let p = match v {
                        PropValue::Str(s) => ArchivedProp {
                            string: Some(s.clone()),
                            ..Default::default()
                        },
                        PropValue::Num(n) => ArchivedProp {
                            number: Some(*n),
                            ..Default::default()
                        },
                        PropValue::Bool(b) => ArchivedProp {
                            boolean: Some(*b),
                            ..Default::default()
                        },
                    };
                    (k.clone(), p)
                })
                .collect(),
            revenue: e.revenue.as_ref().map(|r| ArchivedRevenue {
                amount: r.amount,
                currency: r.currency.clone(),
            }),
            interactive: e.interactive,
            user_agent: e.user_agent.clone(),
            ip_prefix: e.ip_prefix.clone(),
            log_partition: partition as i32,
            log_offset: offset as i64,
            server_side: e.server_side,
        }
    }

    /// Back to the log's event type, moving the strings.
    pub fn into_logged(self) -> LoggedEvent {
        LoggedEvent {
            property: self.property,
            received_at: self.received_at,
            timestamp: self.timestamp,
            visitor: self.visitor as u64,
            name: self.name,
            url: self.url,
            referrer: self.referrer,
            title: self.title,
            props: self
                .props
                .into_iter()
                .filter_map(|(k, v)| {
                    let pv = match (v.string, v.number, v.boolean) {
                        (Some(s), _, _) => PropValue::Str(s),
                        (None, Some(n), _) => PropValue::Num(n),
                        (None, None, Some(b)) => PropValue::Bool(b),
                        _ => return None,
                    };
                    Some((k, pv))
                })
                .collect(),
            revenue: self.revenue.map(|r| Revenue {
                amount: r.amount,
                currency: r.currency,
            }),
            interactive: self.interactive,
            user_agent: self.user_agent,
            ip_prefix: self.ip_prefix,
            server_side: self.server_side,
        }
    }
}

/// An Avro object container file (schema embedded, deflate-compressed blocks).
pub fn encode(events: &[ArchivedEvent]) -> Result<Vec<u8>> {
    encode_with(schema(), events)
}

/// [`encode`] with another schema (the readers' tests write version-1 files).
pub(crate) fn encode_with<T: Serialize>(schema: &Schema, events: &[T]) -> Result<Vec<u8>> {
    let mut config = SerializerConfig::new(schema);
    let mut w = WriterBuilder::new(&mut config)
        .compression(Compression::Deflate {
            level: CompressionLevel::new(6),
        })
        .build(Vec::new())
        .map_err(|e| Error::Avro(e.to_string()))?;
    w.serialize_all(events.iter())
        .map_err(|e| Error::Avro(e.to_string()))?;
    w.into_inner().map_err(|e| Error::Avro(e.to_string()))
}

pub fn decode(bytes: &[u8]) -> Result<Vec<ArchivedEvent>> {
    let mut r = Reader::from_slice(bytes).map_err(|e| Error::Avro(e.to_string()))?;
    r.deserialize::<ArchivedEvent>()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Avro(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = LoggedEvent {
            property: "FF-A".into(),
            received_at: 1_795_600_000_000,
            timestamp: 1_795_599_000_000,
            visitor: u64::MAX - 5,
            name: "Purchase".into(),
            url: Some("https://a.example/x".into()),
            referrer: None,
            title: Some("T".into()),
            props: [
                ("plan".to_string(), PropValue::Str("pro".into())),
                ("n".to_string(), PropValue::Num(2.0)),
                ("b".to_string(), PropValue::Bool(true)),
            ]
            .into(),
            revenue: Some(Revenue {
                amount: 12.5,
                currency: "INR".into(),
            }),
            interactive: false,
            user_agent: Some("ua".into()),
            ip_prefix: Some("203.0.113.0".into()),
            server_side: true,
        };
        let a = ArchivedEvent::from_logged(&e, 3, 99);
        let bytes = encode(std::slice::from_ref(&a)).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back, vec![a]);
        assert_eq!(back[0].clone().into_logged(), e);
    }
}
