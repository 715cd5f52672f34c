//! The clock seam. Code that needs "now" takes a `Clock` so tests can drive time.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::Millis;

/// Contract: `now_millis` returns wall-clock milliseconds since the Unix epoch (UTC). It
/// is not guaranteed monotonic (the system clock may step); callers that need ordering
/// must not rely on it.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> Millis;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at: Millis) -> Self {
        Self(AtomicI64::new(at))
    }
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst)
    }
    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}
