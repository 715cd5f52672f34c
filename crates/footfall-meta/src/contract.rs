//! The [`MetaStore`] contract as one test suite that every implementation runs against
//! itself (SQLite in this crate's tests, PostgreSQL in `footfall-pg`'s). It uses the
//! trait only; what an implementation keeps on disk is checked by its own tests.

use std::sync::Arc;

use crate::{Error, MetaStore, PropertyChanges, Scope, ALL_PROPERTIES};

/// Opens connections of one implementation to the same, initially empty, store.
pub trait Harness {
    /// A new connection (as another process would have).
    fn connect(&mut self) -> Arc<dyn MetaStore>;
}

/// Runs every check of the contract; panics with the check's name on the first failure.
pub fn run(h: &mut dyn Harness) {
    let m = h.connect();
    let other = h.connect();
    properties(m.as_ref(), other.as_ref());
    keys(m.as_ref(), other.as_ref());
    secrets_and_salts(m.as_ref(), other.as_ref());
    imports(m.as_ref(), other.as_ref());
    change_counter(m.as_ref(), other.as_ref());
}

fn properties(m: &dyn MetaStore, other: &dyn MetaStore) {
    let p = m
        .create_property("Shop", "Asia/Kolkata", &["www.Shop.example".into()])
        .expect("properties: create");
    assert!(p.tracking_id.starts_with("FF-") && p.tracking_id.len() == 11);
    assert_eq!(
        p.domains,
        vec!["shop.example"],
        "properties: domains normalised"
    );
    assert!(matches!(
        m.create_property("x", "Mars/Base", &[]),
        Err(Error::BadTimezone(_))
    ));
    assert!(matches!(
        m.create_property(" ", "UTC", &[]),
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        other.property(&p.tracking_id).unwrap().as_ref(),
        Some(&p),
        "properties: visible to another connection"
    );
    let u = m
        .update_property(
            &p.tracking_id,
            PropertyChanges {
                timezone: Some("America/St_Johns"),
                session_gap_minutes: Some(45),
                domains: Some(&["a.example".into(), "b.example".into()]),
                ..Default::default()
            },
        )
        .expect("properties: update");
    assert_eq!(u.timezone, "America/St_Johns");
    assert_eq!(u.session_gap_minutes, Some(45));
    assert_eq!(other.property(&p.tracking_id).unwrap(), Some(u.clone()));
    // Goals: the whole list replaced, kept with the property, checked first.
    let goals = [
        crate::Goal::page("/checkout/**"),
        crate::Goal::event("Signup", [("plan".into(), "pro".into())].into()),
    ];
    let u = m
        .update_property(
            &p.tracking_id,
            PropertyChanges {
                goals: Some(&goals),
                ..Default::default()
            },
        )
        .expect("properties: goals");
    assert_eq!(u.goals, goals);
    assert_eq!(u.session_gap_minutes, Some(45), "other fields stay");
    assert_eq!(other.property(&p.tracking_id).unwrap(), Some(u.clone()));
    assert!(matches!(
        m.update_property(
            &p.tracking_id,
            PropertyChanges {
                goals: Some(&[crate::Goal::page("no-slash")]),
                ..Default::default()
            }
        ),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        m.update_property(
            &p.tracking_id,
            PropertyChanges {
                session_gap_minutes: Some(0),
                ..Default::default()
            }
        ),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        m.update_property("FF-NOPE0000", PropertyChanges::default()),
        Err(Error::NoSuchProperty(_))
    ));
    assert_eq!(m.property("FF-NOPE0000").unwrap(), None);
    let q = other.create_property("Second", "UTC", &[]).unwrap();
    let all = m.properties().unwrap();
    assert_eq!(all.len(), 2, "properties: listed");
    assert!(all.contains(&u) && all.contains(&q));
}

fn keys(m: &dyn MetaStore, other: &dyn MetaStore) {
    let p = &m.properties().unwrap()[0];
    let (key, grant) = m
        .create_key(&p.tracking_id, Scope::Read)
        .expect("keys: create");
    assert!(key.starts_with("ffr_") && key.len() > 30);
    assert_eq!(grant.scope, Scope::Read);
    assert_eq!(grant.property, p.tracking_id);
    assert!(
        key.starts_with(&grant.key_id),
        "keys: the id is the key's public prefix"
    );
    assert_eq!(other.verify_key(&key).unwrap(), Some(grant.clone()));
    assert_eq!(m.verify_key("ffr_nope").unwrap(), None);
    assert_eq!(m.verify_key(&key[..key.len() - 1]).unwrap(), None);
    let (w, wg) = m.create_key(&p.tracking_id, Scope::Write).unwrap();
    assert!(w.starts_with("ffw_"));
    assert_eq!(m.verify_key(&w).unwrap().unwrap().scope, wg.scope);
    assert!(matches!(
        m.create_key("FF-NOPE0000", Scope::Read),
        Err(Error::NoSuchProperty(_))
    ));
    assert!(m.create_key(&p.tracking_id, Scope::Admin).is_err());
    let (a, ag) = m.create_key(ALL_PROPERTIES, Scope::Admin).unwrap();
    assert_eq!(ag.property, ALL_PROPERTIES);
    assert_eq!(other.verify_key(&a).unwrap().unwrap().scope, Scope::Admin);
    // Listing shows ids and scopes, never a key; revoking stops a key everywhere.
    let listed = other.keys(&p.tracking_id).unwrap();
    assert_eq!(listed.len(), 2, "keys: listed");
    assert_eq!(listed[0].key_id, grant.key_id);
    assert!(listed
        .iter()
        .all(|k| k.key_id.len() == 10 && k.property == p.tracking_id));
    assert_eq!(other.keys(ALL_PROPERTIES).unwrap()[0].key_id, ag.key_id);
    assert!(
        !m.revoke_key("FF-NOPE0000", &grant.key_id).unwrap(),
        "keys: another property's id"
    );
    let before = other.change_counter().unwrap();
    assert!(m.revoke_key(&p.tracking_id, &grant.key_id).unwrap());
    assert_eq!(other.verify_key(&key).unwrap(), None, "keys: revoked");
    assert_ne!(
        other.change_counter().unwrap(),
        before,
        "keys: others see the change"
    );
    assert!(!m.revoke_key(&p.tracking_id, &grant.key_id).unwrap());
    assert_eq!(m.keys(&p.tracking_id).unwrap().len(), 1);
}

fn secrets_and_salts(m: &dyn MetaStore, other: &dyn MetaStore) {
    let s = m.secret().unwrap();
    assert_eq!(other.secret().unwrap(), s, "secrets: one per installation");
    let s100 = m.daily_salt(100).unwrap();
    assert_eq!(other.daily_salt(100).unwrap(), s100, "salts: one per day");
    let s101 = m.daily_salt(101).unwrap();
    assert_ne!(s100, s101);
    // Asking for day 102 deletes day 100's salt: it can never be had again.
    m.daily_salt(102).unwrap();
    assert_eq!(
        m.daily_salt(101).unwrap(),
        s101,
        "salts: yesterday's is kept"
    );
    assert_ne!(
        other.daily_salt(100).unwrap(),
        s100,
        "salts: older than yesterday are deleted"
    );
}

fn imports(m: &dyn MetaStore, other: &dyn MetaStore) {
    let p = m.properties().unwrap()[0].tracking_id.clone();
    assert_eq!(m.import_progress(&p, "abc").unwrap(), None);
    m.record_import(&p, "abc", 500, false).unwrap();
    assert_eq!(
        other.import_progress(&p, "abc").unwrap(),
        Some((500, false))
    );
    m.record_import(&p, "abc", 1_234, true).unwrap();
    assert_eq!(
        other.import_progress(&p, "abc").unwrap(),
        Some((1_234, true))
    );
    assert_eq!(other.import_progress(&p, "abd").unwrap(), None);
}

fn change_counter(m: &dyn MetaStore, other: &dyn MetaStore) {
    let before = m.change_counter().unwrap();
    other
        .create_property("Third", "Europe/London", &[])
        .unwrap();
    let after = m.change_counter().unwrap();
    assert_ne!(
        after, before,
        "change_counter: another connection's commit moves it"
    );
    let p = m.properties().unwrap()[0].tracking_id.clone();
    other
        .update_property(
            &p,
            PropertyChanges {
                name: Some("Renamed"),
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(
        m.change_counter().unwrap(),
        after,
        "change_counter: updates move it"
    );
    other.create_key(&p, Scope::Read).unwrap();
    let k = m.change_counter().unwrap();
    assert_eq!(
        m.change_counter().unwrap(),
        k,
        "change_counter: reads do not move it"
    );
}
