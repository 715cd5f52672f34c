//! Benchmark data: a deterministic synthetic month of traffic for one property, written
//! straight into a log (as the collector would have) or as CSV for other engines.
//!
//! Shape: visits start uniformly over the period; a visitor comes back with probability
//! 0.3; a visit has 1–8 events (40% single page views) 10 s – 10 min apart; pages follow
//! a Zipf-like long tail; a tenth of events are custom events; sources are a mix of
//! search, social, campaigns and direct.

use footfall_event::LoggedEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const REFERRERS: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("https://www.google.com/search?q=shop"),
    Some("https://www.google.com/"),
    Some("https://duckduckgo.com/"),
    Some("https://t.co/abc"),
    Some("https://www.facebook.com/"),
    Some("https://news.ycombinator.com/item?id=1"),
    Some("https://www.bing.com/search?q=x"),
    Some("https://www.instagram.com/"),
    Some("https://partner-blog.example/review"),
];

#[derive(Debug, Clone)]
pub struct DataSpec {
    pub property: String,
    pub events: u64,
    pub days: u32,
    /// Last moment of the period (ms since epoch).
    pub end_ms: i64,
    pub seed: u64,
}

/// Generates events day by day, each day sorted by time, calling `sink` per day.
pub fn generate(spec: &DataSpec, mut sink: impl FnMut(Vec<LoggedEvent>)) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let per_day = spec.events / spec.days as u64;
    let start = spec.end_ms - spec.days as i64 * 86_400_000;
    let visitors_pool = (spec.events / 8).max(1);
    let mut made = 0u64;
    for day in 0..spec.days {
        let target = if day + 1 == spec.days {
            spec.events - made
        } else {
            per_day
        };
        let day_start = start + day as i64 * 86_400_000;
        let mut events = Vec::with_capacity(target as usize + 16);
        while (events.len() as u64) < target {
            let visitor: u64 = rng
                .random_range(0..visitors_pool)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1;
            let mut t = day_start + rng.random_range(0..86_400_000);
            let n = if rng.random_bool(0.4) {
                1
            } else {
                rng.random_range(2..9)
            };
            let referrer = REFERRERS[rng.random_range(0..REFERRERS.len())];
            let campaign = rng.random_bool(0.03);
            for i in 0..n {
                if events.len() as u64 >= target {
                    break;
                }
                let u: f64 = rng.random();
                let rank = (1.0 / (u * 0.9999 + 0.0001)).floor() as u64;
                let path = match rank {
                    1 => "/".to_string(),
                    2 => "/pricing".to_string(),
                    3 => "/blog".to_string(),
                    n => format!("/products/item-{n}"),
                };
                let mut url = format!("https://shop.example{path}");
                if i == 0 && campaign {
                    url.push_str("?utm_source=newsletter");
                }
                let custom = i > 0 && rng.random_bool(0.1);
                events.push(LoggedEvent {
                    property: spec.property.clone(),
                    received_at: t + rng.random_range(50..2000),
                    timestamp: t,
                    visitor,
                    name: if custom {
                        "Signup".into()
                    } else {
                        "pageview".into()
                    },
                    url: Some(url),
                    referrer: if i == 0 {
                        referrer.map(String::from)
                    } else {
                        None
                    },
                    title: None,
                    props: Default::default(),
                    revenue: None,
                    interactive: true,
                    user_agent: Some(
                        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
                            .into(),
                    ),
                    ip_prefix: Some("203.0.113.0".into()),
                    server_side: false,
                });
                t += rng.random_range(10_000..600_000);
            }
        }
        events.sort_by_key(|e| e.received_at);
        made += events.len() as u64;
        sink(events);
    }
}
