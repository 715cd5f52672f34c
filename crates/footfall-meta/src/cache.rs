//! A read-through cache of metadata for the hot paths (ingestion and queries), cleared
//! whenever the metadata store reports a commit by another process (e.g. the CLI).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{KeyGrant, MetaStore, Property};

pub struct MetaCache {
    meta: Arc<dyn MetaStore>,
    properties: RwLock<HashMap<String, Option<Arc<Property>>>>,
    keys: RwLock<HashMap<String, Option<KeyGrant>>>,
    salt: Mutex<Option<(i64, [u8; 16])>>,
    /// Allowed domain → properties, built on first use after each change.
    domains: RwLock<Option<HashMap<String, Vec<String>>>>,
    secret: [u8; 16],
    seen_change: Mutex<u64>,
}

impl MetaCache {
    pub fn new(meta: Arc<dyn MetaStore>) -> crate::Result<Self> {
        let secret = meta.secret()?;
        let seen = meta.change_counter()?;
        Ok(Self {
            meta,
            properties: RwLock::default(),
            keys: RwLock::default(),
            salt: Mutex::new(None),
            domains: RwLock::new(None),
            secret,
            seen_change: Mutex::new(seen),
        })
    }

    /// The store behind the cache (for changes; reads go through the cache).
    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    pub fn secret(&self) -> &[u8; 16] {
        &self.secret
    }

    pub fn property(&self, id: &str) -> crate::Result<Option<Arc<Property>>> {
        if let Some(p) = self.properties.read().unwrap().get(id) {
            return Ok(p.clone());
        }
        let p = self.meta.property(id)?.map(Arc::new);
        let mut w = self.properties.write().unwrap();
        // Bound the negative cache so random ids cannot grow it without limit.
        if w.len() > 100_000 {
            w.clear();
        }
        w.insert(id.to_string(), p.clone());
        Ok(p)
    }

    pub fn key(&self, key: &str) -> crate::Result<Option<KeyGrant>> {
        if let Some(g) = self.keys.read().unwrap().get(key) {
            return Ok(g.clone());
        }
        let g = self.meta.verify_key(key)?;
        let mut w = self.keys.write().unwrap();
        if w.len() > 100_000 {
            w.clear();
        }
        w.insert(key.to_string(), g.clone());
        Ok(g)
    }

    /// Properties that list `domain` (lower-case, without `www.`) among their domains.
    pub fn properties_for_domain(&self, domain: &str) -> crate::Result<Vec<String>> {
        if let Some(m) = self.domains.read().unwrap().as_ref() {
            return Ok(m.get(domain).cloned().unwrap_or_default());
        }
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for p in self.meta.properties()? {
            for d in &p.domains {
                m.entry(d.clone()).or_default().push(p.tracking_id.clone());
            }
        }
        let out = m.get(domain).cloned().unwrap_or_default();
        *self.domains.write().unwrap() = Some(m);
        Ok(out)
    }

    /// The salt for a UTC day number.
    pub fn salt(&self, day: i64) -> crate::Result<[u8; 16]> {
        let mut s = self.salt.lock().unwrap();
        if let Some((d, salt)) = *s {
            if d == day {
                return Ok(salt);
            }
        }
        let salt = self.meta.daily_salt(day)?;
        *s = Some((day, salt));
        Ok(salt)
    }

    /// Forgets everything cached (after a change made through this process, which its
    /// own store's `change_counter` may not report).
    pub fn invalidate(&self) {
        self.properties.write().unwrap().clear();
        self.keys.write().unwrap().clear();
        *self.domains.write().unwrap() = None;
    }

    /// Clears the caches if the store changed since the last call.
    pub fn refresh(&self) -> crate::Result<bool> {
        let c = self.meta.change_counter()?;
        let mut seen = self.seen_change.lock().unwrap();
        if *seen == c {
            return Ok(false);
        }
        *seen = c;
        self.properties.write().unwrap().clear();
        self.keys.write().unwrap().clear();
        *self.domains.write().unwrap() = None;
        Ok(true)
    }
}
