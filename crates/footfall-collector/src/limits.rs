//! Per-property ingestion limits on one collector node: a rate (a token bucket of events
//! per second with a burst) and a daily quota (events per UTC day). A merchant's bug or a
//! bot flooding one property is refused (429 with Retry-After, in each protocol's shape)
//! while every other property's events are taken. Each node holds its own buckets, so
//! with N collectors a property may get up to N times its limit (docs/SECURITY.md).

use std::collections::HashMap;
use std::sync::Mutex;

use footfall_event::native::Rejection;

/// One property's limits; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub events_per_second: f64,
    /// Events a property may send at once above its rate (the bucket's size).
    pub burst: f64,
    pub daily_quota: u64,
}

impl Limit {
    pub const NONE: Limit = Limit {
        events_per_second: 0.0,
        burst: 0.0,
        daily_quota: 0,
    };
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
    day: i64,
    used_today: u64,
}

/// The limits of every property (a default and overrides by tracking id) and the state
/// that enforces them.
#[derive(Debug)]
pub struct PropertyLimits {
    default: Limit,
    overrides: HashMap<String, Limit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for PropertyLimits {
    fn default() -> Self {
        Self::new(Limit::NONE, HashMap::new())
    }
}

const DAY_MS: i64 = 86_400_000;

impl PropertyLimits {
    pub fn new(default: Limit, overrides: HashMap<String, Limit>) -> Self {
        Self {
            default,
            overrides,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, property: &str) -> Limit {
        self.overrides
            .get(property)
            .copied()
            .unwrap_or(self.default)
    }

    /// Takes one event of `property` at `now_ms`, or says why not: `rate_limited`
    /// (retry in a second) or `quota_exceeded` (retry at the next UTC midnight).
    /// Called only for events of a known property, so the state holds one entry per
    /// property that sent something.
    pub fn take(&self, property: &str, now_ms: i64) -> Result<(), Rejection> {
        let limit = self.limit(property);
        if limit.events_per_second <= 0.0 && limit.daily_quota == 0 {
            return Ok(());
        }
        let day = now_ms.div_euclid(DAY_MS);
        let size = limit.burst.max(limit.events_per_second).max(1.0);
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // The tracking id is copied only for a property's first event on this node.
        if !all.contains_key(property) {
            let fresh = Bucket {
                tokens: size,
                at_ms: now_ms,
                day,
                used_today: 0,
            };
            all.insert(property.to_string(), fresh);
        }
        let b = all.get_mut(property).expect("inserted above");
        if b.day != day {
            b.day = day;
            b.used_today = 0;
        }
        if limit.daily_quota > 0 && b.used_today >= limit.daily_quota {
            let secs = ((day + 1) * DAY_MS - now_ms + 999) / 1000;
            let mut r = Rejection::new(
                "quota_exceeded",
                format!(
                    "this property's daily quota of {} events is used up until 00:00 UTC",
                    limit.daily_quota
                ),
            );
            r.retry_after = Some(secs.max(1) as u32);
            return Err(r);
        }
        if limit.events_per_second > 0.0 {
            // Requests read the clock before they wait for this lock, so times arrive out
            // of order: the bucket's time only moves forward, or a late-arriving earlier
            // time would be refilled twice.
            if now_ms > b.at_ms {
                let elapsed = (now_ms - b.at_ms) as f64 / 1000.0;
                b.tokens = (b.tokens + elapsed * limit.events_per_second).min(size);
                b.at_ms = now_ms;
            }
            if b.tokens < 1.0 {
                let mut r = Rejection::new(
                    "rate_limited",
                    format!(
                        "this property sends more than {} events per second",
                        limit.events_per_second
                    ),
                );
                r.retry_after = Some(1);
                return Err(r);
            }
            b.tokens -= 1.0;
        }
        b.used_today += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_burst_and_quota_per_property() {
        let limits = PropertyLimits::new(
            Limit {
                events_per_second: 10.0,
                burst: 20.0,
                daily_quota: 0,
            },
            [(
                "FF-QUOTA".to_string(),
                Limit {
                    events_per_second: 0.0,
                    burst: 0.0,
                    daily_quota: 5,
                },
            )]
            .into(),
        );
        let t0 = 1_796_000_000_000;
        // The burst, then nothing until tokens come back at the rate.
        assert!((0..20).all(|_| limits.take("FF-A", t0).is_ok()));
        let r = limits.take("FF-A", t0).unwrap_err();
        assert_eq!((r.code, r.retry_after), ("rate_limited", Some(1)));
        assert!(
            limits.take("FF-B", t0).is_ok(),
            "another property is not touched"
        );
        assert!(
            limits.take("FF-A", t0 + 100).is_ok(),
            "one token after 100 ms"
        );
        assert!(limits.take("FF-A", t0 + 100).is_err());
        // The quota: five a day, then refused until midnight UTC, then five again.
        assert!((0..5).all(|_| limits.take("FF-QUOTA", t0).is_ok()));
        let r = limits.take("FF-QUOTA", t0).unwrap_err();
        assert_eq!(r.code, "quota_exceeded");
        let midnight = (t0 / DAY_MS + 1) * DAY_MS;
        assert_eq!(r.retry_after, Some(((midnight - t0 + 999) / 1000) as u32));
        assert!(limits.take("FF-QUOTA", midnight).is_ok());
        assert!(PropertyLimits::default().take("FF-A", t0).is_ok());
    }

    /// Times out of order (concurrent requests) do not refill the bucket twice: over
    /// a second of interleaved times, at most a full bucket (never less than a second's
    /// rate) and a second's rate are taken.
    #[test]
    fn out_of_order_times_refill_once() {
        let limits = PropertyLimits::new(
            Limit {
                events_per_second: 100.0,
                burst: 10.0,
                daily_quota: 0,
            },
            Default::default(),
        );
        let t0 = 1_796_000_000_000;
        let mut taken = 0;
        for ms in 0..1000 {
            // Each millisecond, a request from 5 ms ago arrives after the current one.
            for t in [t0 + ms, t0 + ms - 5] {
                taken += limits.take("FF-A", t).is_ok() as u32;
            }
        }
        assert!(taken <= 100 + 100 + 1, "{taken} taken");
        assert!(taken >= 100, "{taken} taken");
    }
}
