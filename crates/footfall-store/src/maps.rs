//! Hash maps for the hot paths.
//!
//! - Keys that users control (page paths, event names, sources) use foldhash with a
//!   random seed per process: fast, and not open to collision flooding.
//! - Keys that are already keyed hashes (visitor ids: SipHash outputs under the
//!   installation secret) need no rehashing: [`IdHasher`] passes them through.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Map keyed by user-controlled strings (hashbrown for `entry_ref`: look up by `&str`
/// and allocate the key only when inserting).
pub type KeyMap<V> = hashbrown::HashMap<String, V, foldhash::fast::RandomState>;

/// Pass-through hasher for keys that are already uniformly distributed 64-bit hashes.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are expected; fold anything else in rather than fail.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type IdBuild = BuildHasherDefault<IdHasher>;
pub type IdSet = HashSet<u64, IdBuild>;
pub type IdMap<V> = HashMap<u64, V, IdBuild>;
