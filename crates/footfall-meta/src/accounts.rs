//! Accounts (merchants), their users and properties, and dashboard sessions.
//!
//! [`AccountStore`] is the contract; the metadata stores implement it beside
//! [`crate::MetaStore`], in the same database, so that every query node of a cluster sees
//! the same users and sessions. Passwords arrive here already hashed (argon2id, by
//! `footfall-auth`), and sessions are kept by the SHA-256 of their token: neither a
//! password nor a usable session token is ever stored.

use serde::Serialize;

use crate::{random_string, Error, Result, ID_ALPHABET};

/// What a user may do in an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the account's dashboards.
    Viewer,
    /// Also manages properties, API keys and shared links.
    Admin,
    /// Also manages users and invitations.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(Error::Invalid(format!(
                "`{s}` is not a role (owner, admin, viewer)"
            ))),
        }
    }
}

/// A merchant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
}

/// A person who logs in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: String,
    /// Lower case.
    pub email: String,
}

/// A logged-in session (found by its token's hash).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user: User,
    /// The token state-changing requests must echo (`X-CSRF-Token`).
    pub csrf: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// A property's read-only link (the token itself is shown once, when made).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareLink {
    pub id: String,
    pub tracking_id: String,
    pub created_at: String,
}

/// An invitation to join an account (the token itself is shown once, when made).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invite {
    pub id: String,
    pub account_id: String,
    /// Lower case.
    pub email: String,
    pub role: Role,
    pub created_at: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// An invitation as stores keep it: id, account, e-mail, role (as text), created,
/// expires.
pub type InviteRow = (String, String, String, String, String, i64);

impl Invite {
    /// An invitation read back from a store (the role is checked).
    pub fn from_row(row: InviteRow) -> Result<Invite> {
        Ok(Invite {
            id: row.0,
            account_id: row.1,
            email: row.2,
            role: Role::parse(&row.3)?,
            created_at: row.4,
            expires_at: row.5,
        })
    }
}

/// A new invitation (every [`AccountStore`] makes invitations through this).
pub fn new_invite(account_id: &str, email: &str, role: Role, expires_at: i64) -> Result<Invite> {
    Ok(Invite {
        id: format!("IN-{}", random_string(ID_ALPHABET, 8)),
        account_id: account_id.to_string(),
        email: normalise_email(email)?,
        role,
        created_at: crate::now_text(),
        expires_at,
    })
}

/// A new read-only link of a property (every [`AccountStore`] makes links through this).
pub fn new_share(tracking_id: &str) -> ShareLink {
    ShareLink {
        id: format!("SH-{}", random_string(ID_ALPHABET, 8)),
        tracking_id: tracking_id.to_string(),
        created_at: crate::now_text(),
    }
}

/// A new account with a fresh id, its name checked (every [`AccountStore`] creates
/// accounts through this).
pub fn new_account(name: &str) -> Result<Account> {
    if name.trim().is_empty() {
        return Err(Error::Invalid("an account needs a name".into()));
    }
    Ok(Account {
        id: format!("AC-{}", random_string(ID_ALPHABET, 8)),
        name: name.trim().to_string(),
    })
}

/// A new user with a fresh id and the address normalised (every [`AccountStore`]
/// creates users through this).
pub fn new_user(email: &str) -> Result<User> {
    Ok(User {
        id: format!("US-{}", random_string(ID_ALPHABET, 8)),
        email: normalise_email(email)?,
    })
}

/// An e-mail address as users are found by: trimmed, lower case, with one `@`.
pub fn normalise_email(email: &str) -> Result<String> {
    let e = email.trim().to_ascii_lowercase();
    match e.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@') =>
        {
            Ok(e)
        }
        _ => Err(Error::Invalid(format!(
            "`{email}` is not an e-mail address"
        ))),
    }
}

/// Where accounts, users, memberships and sessions are kept.
///
/// Contract ([`contract::run`] in every implementation's tests):
/// - Ids are unique; an e-mail address names at most one user (compared in lower case).
/// - A property belongs to at most one account; `account_properties` lists them.
/// - `memberships` lists a user's accounts with the role held in each; adding a member
///   again changes the role.
/// - `session` finds an unexpired session only; `delete_session` and expiry end it.
/// - `login_failures` counts the failures recorded for a key since a time;
///   `clear_login_failures` forgets them.
/// - A share link names one property by its token's hash until it is revoked.
/// - An invitation is taken once: `take_invite` returns it (if unexpired) and removes
///   it in one step, so two people racing with one link cannot both join; `invites`
///   lists an account's pending ones; `revoke_invite` removes one of that account's.
pub trait AccountStore: Send + Sync {
    fn create_account(&self, name: &str) -> Result<Account>;
    fn account(&self, id: &str) -> Result<Option<Account>>;
    /// Gives a property to an account (moving it from any other).
    fn assign_property(&self, account_id: &str, tracking_id: &str) -> Result<()>;
    fn account_properties(&self, account_id: &str) -> Result<Vec<String>>;
    /// A new user with a password hash (PHC string).
    fn create_user(&self, email: &str, password_hash: &str) -> Result<User>;
    /// The user and their password hash.
    fn user_by_email(&self, email: &str) -> Result<Option<(User, String)>>;
    fn set_password(&self, user_id: &str, password_hash: &str) -> Result<()>;
    fn add_member(&self, account_id: &str, user_id: &str, role: Role) -> Result<()>;
    fn memberships(&self, user_id: &str) -> Result<Vec<(Account, Role)>>;
    fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()>;
    /// The session, if it exists and has not expired at `now` (Unix ms).
    fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>>;
    fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// Ends every session of a user (a password change).
    fn delete_user_sessions(&self, user_id: &str) -> Result<()>;
    fn record_login_failure(&self, key: &str, at: i64) -> Result<()>;
    fn login_failures(&self, key: &str, since: i64) -> Result<u32>;
    fn clear_login_failures(&self, key: &str) -> Result<()>;
    fn create_share(&self, tracking_id: &str, token_hash: &str) -> Result<ShareLink>;
    fn shares(&self, tracking_id: &str) -> Result<Vec<ShareLink>>;
    /// The property a share link's token (hashed) opens, if the link exists.
    fn shared_property(&self, token_hash: &str) -> Result<Option<String>>;
    fn revoke_share(&self, tracking_id: &str, id: &str) -> Result<bool>;
    /// Stores `invite`, found later by its token's hash.
    fn create_invite(&self, invite: &Invite, token_hash: &str) -> Result<()>;
    fn invites(&self, account_id: &str) -> Result<Vec<Invite>>;
    /// The invitation of a token (hashed) if it exists and is unexpired at `now`, left
    /// in place (to show the invited person what they are joining).
    fn invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>>;
    /// The invitation of a token (hashed), removed as it is returned; None if there is
    /// none or it expired before `now` (Unix milliseconds).
    fn take_invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>>;
    fn revoke_invite(&self, account_id: &str, id: &str) -> Result<bool>;
}

/// The [`AccountStore`] contract as a test suite every implementation runs.
pub mod contract {
    use super::*;

    pub fn run(s: &dyn AccountStore, property_a: &str, property_b: &str) {
        let a = s.create_account("Acme").expect("accounts: create");
        assert!(a.id.starts_with("AC-"));
        assert_eq!(s.account(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(s.account("AC-NOPE0000").unwrap(), None);
        let b = s.create_account("Other").unwrap();
        s.assign_property(&a.id, property_a).unwrap();
        s.assign_property(&b.id, property_b).unwrap();
        assert_eq!(s.account_properties(&a.id).unwrap(), vec![property_a]);
        // Moving a property takes it from its account.
        s.assign_property(&a.id, property_b).unwrap();
        assert!(s.account_properties(&b.id).unwrap().is_empty());
        s.assign_property(&b.id, property_b).unwrap();
        assert_eq!(s.account_properties(&b.id).unwrap(), vec![property_b]);
        assert!(s.assign_property("AC-NOPE0000", property_a).is_err());

        let u = s.create_user(" Ann@Acme.Example ", "$argon2id$x").unwrap();
        assert_eq!(u.email, "ann@acme.example", "users: e-mail normalised");
        assert!(
            s.create_user("ann@acme.example", "h").is_err(),
            "users: one user per address"
        );
        assert!(s.create_user("not-an-address", "h").is_err());
        let (found, hash) = s.user_by_email("ANN@acme.example").unwrap().unwrap();
        assert_eq!((found, hash.as_str()), (u.clone(), "$argon2id$x"));
        s.set_password(&u.id, "$argon2id$y").unwrap();
        assert_eq!(
            s.user_by_email("ann@acme.example").unwrap().unwrap().1,
            "$argon2id$y"
        );
        assert_eq!(s.user_by_email("nobody@acme.example").unwrap(), None);

        s.add_member(&a.id, &u.id, Role::Viewer).unwrap();
        s.add_member(&a.id, &u.id, Role::Admin).unwrap();
        assert_eq!(
            s.memberships(&u.id).unwrap(),
            vec![(a.clone(), Role::Admin)]
        );

        s.create_session("h1", &u.id, "c1", 2_000).unwrap();
        s.create_session("h2", &u.id, "c2", 2_000).unwrap();
        let got = s.session("h1", 1_000).unwrap().expect("sessions: found");
        assert_eq!(
            (got.user, got.csrf.as_str(), got.expires_at),
            (u.clone(), "c1", 2_000)
        );
        assert_eq!(s.session("h1", 2_000).unwrap(), None, "sessions: expired");
        assert_eq!(s.session("nope", 1_000).unwrap(), None);
        s.delete_session("h1").unwrap();
        assert_eq!(s.session("h1", 1_000).unwrap(), None, "sessions: deleted");
        s.delete_user_sessions(&u.id).unwrap();
        assert_eq!(
            s.session("h2", 1_000).unwrap(),
            None,
            "sessions: all of a user"
        );

        for t in [100, 200, 300] {
            s.record_login_failure("ann@acme.example", t).unwrap();
        }
        assert_eq!(s.login_failures("ann@acme.example", 150).unwrap(), 2);
        assert_eq!(s.login_failures("other", 0).unwrap(), 0);
        s.clear_login_failures("ann@acme.example").unwrap();
        assert_eq!(s.login_failures("ann@acme.example", 0).unwrap(), 0);

        let l = s.create_share(property_a, "t1").unwrap();
        assert!(l.id.starts_with("SH-"));
        assert_eq!(s.shares(property_a).unwrap(), vec![l.clone()]);
        assert!(s.shares(property_b).unwrap().is_empty());
        assert_eq!(
            s.shared_property("t1").unwrap().as_deref(),
            Some(property_a)
        );
        assert_eq!(s.shared_property("t2").unwrap(), None);
        assert!(
            !s.revoke_share(property_b, &l.id).unwrap(),
            "shares: another property's"
        );
        assert!(s.revoke_share(property_a, &l.id).unwrap());
        assert_eq!(s.shared_property("t1").unwrap(), None, "shares: revoked");

        let i = new_invite(&a.id, " Bob@Acme.Example", Role::Viewer, 5_000).unwrap();
        assert_eq!(i.email, "bob@acme.example", "invites: e-mail normalised");
        s.create_invite(&i, "i1").unwrap();
        let j = new_invite(&a.id, "cy@acme.example", Role::Admin, 5_000).unwrap();
        s.create_invite(&j, "i2").unwrap();
        let k = new_invite(&b.id, "di@other.example", Role::Owner, 5_000).unwrap();
        s.create_invite(&k, "i3").unwrap();
        let mut listed = s.invites(&a.id).unwrap();
        listed.sort_by(|x, y| x.id.cmp(&y.id));
        let mut expected = vec![i.clone(), j.clone()];
        expected.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(listed, expected, "invites: an account's pending ones");
        assert_eq!(s.invite("i1", 4_999).unwrap(), Some(i.clone()));
        assert_eq!(
            s.invite("i1", 4_999).unwrap(),
            Some(i.clone()),
            "invites: peeked"
        );
        assert_eq!(s.invite("nope", 0).unwrap(), None);
        assert_eq!(s.invite("i1", 5_000).unwrap(), None, "invites: expired");
        assert_eq!(
            s.take_invite("i1", 5_000).unwrap(),
            None,
            "invites: expired"
        );
        assert_eq!(s.take_invite("i2", 4_999).unwrap(), Some(j.clone()));
        assert_eq!(
            s.take_invite("i2", 4_999).unwrap(),
            None,
            "invites: taken once"
        );
        assert!(
            !s.revoke_invite(&a.id, &k.id).unwrap(),
            "invites: another account's"
        );
        assert!(s.revoke_invite(&b.id, &k.id).unwrap());
        assert_eq!(s.take_invite("i3", 0).unwrap(), None, "invites: revoked");
    }
}
