//! Partition leases: which processor owns which log partition, recorded in the shared
//! store whose writes they guard (see `footfall_processor::cluster` for how processors
//! use them).

use std::time::Duration;

/// Where partition ownership is recorded.
///
/// Contract ([`contract::run`] in every implementation's tests):
/// - At most one owner holds an unexpired lease of a partition at any time; expiry is
///   judged by the store's clock.
/// - `acquire` takes a partition whose lease is free, expired or already the caller's
///   (then it is renewed) and answers whether the caller holds it now.
/// - `release` gives up the caller's lease (another's is left alone).
/// - `heartbeat` records that the caller is alive for `ttl` and answers how many
///   processors are alive.
/// - `leave` forgets the caller's heartbeat at once (a processor stopping cleanly), so
///   that the others count it gone without waiting for it to expire.
pub trait Leases: Send + Sync {
    fn heartbeat(&self, owner: &str, ttl: Duration) -> Result<usize, String>;
    fn leave(&self, owner: &str) -> Result<(), String>;
    /// Unexpired leases: (partition, owner).
    fn holders(&self) -> Result<Vec<(u32, String)>, String>;
    fn acquire(&self, partition: u32, owner: &str, ttl: Duration) -> Result<bool, String>;
    fn release(&self, partition: u32, owner: &str) -> Result<(), String>;
}

/// The [`Leases`] contract as a test suite every implementation runs.
pub mod contract {
    use super::*;

    pub fn run(l: &dyn Leases) {
        let ttl = Duration::from_millis(800);
        assert_eq!(l.heartbeat("a", ttl).unwrap(), 1);
        assert_eq!(l.heartbeat("b", ttl).unwrap(), 2, "two processors alive");
        assert_eq!(l.heartbeat("c", ttl).unwrap(), 3);
        l.leave("c").unwrap();
        assert_eq!(
            l.heartbeat("b", ttl).unwrap(),
            2,
            "one that left is not alive"
        );
        assert!(l.acquire(0, "a", ttl).unwrap(), "a free partition is taken");
        assert!(!l.acquire(0, "b", ttl).unwrap(), "a held partition is not");
        assert!(l.acquire(0, "a", ttl).unwrap(), "the owner renews");
        assert!(l.acquire(1, "b", ttl).unwrap());
        let mut h = l.holders().unwrap();
        h.sort();
        assert_eq!(h, vec![(0, "a".to_string()), (1, "b".to_string())]);
        l.release(0, "b").unwrap();
        assert_eq!(
            l.holders().unwrap().len(),
            2,
            "another's lease is not released"
        );
        l.release(0, "a").unwrap();
        assert!(
            l.acquire(0, "b", ttl).unwrap(),
            "a released partition is free"
        );
        // Expiry: b stops renewing; a takes its partitions after the lease time.
        std::thread::sleep(ttl + Duration::from_millis(400));
        assert_eq!(l.heartbeat("a", ttl).unwrap(), 1, "b is no longer alive");
        assert!(
            l.holders().unwrap().is_empty(),
            "expired leases are not held"
        );
        assert!(l.acquire(0, "a", ttl).unwrap(), "an expired lease is taken");
        assert!(l.acquire(1, "a", ttl).unwrap());
    }
}
