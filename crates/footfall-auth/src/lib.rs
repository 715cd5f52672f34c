//! Dashboard logins over [`AccountStore`]:
//!
//! - **Passwords** are hashed with argon2id (the `argon2` crate's defaults: 19 MiB,
//!   2 passes, OWASP's minimum) and stored as PHC strings; at least
//!   [`MIN_PASSWORD_CHARS`] characters.
//! - **Sessions**: a login gets a random 256-bit token (the cookie) and a random CSRF
//!   token; the store keeps only the token's SHA-256, so a copy of the database opens no
//!   session. Sessions expire after [`AuthOptions::session_ttl`]; logout and a password
//!   change end them.
//! - **CSRF**: every state-changing request with a session must echo the session's CSRF
//!   token in `X-CSRF-Token` ([`check_csrf`], compared in constant time); the cookie is
//!   also `SameSite=Strict`.
//! - **Throttling**: after [`AuthOptions::max_failures`] failed logins for one address,
//!   or four times as many from one client address, within
//!   [`AuthOptions::failure_window`], further attempts are refused with a retry time,
//!   whatever the password — so guessing costs a window per few tries. A login for an
//!   unknown address costs the same hashing time as one for a known address.
//! - **Roles**: a user sees the properties of the accounts they belong to, and nothing
//!   else; what each role may change is [`Role::may`].

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use footfall_meta::{Account, AccountStore, Invite, Role, Session, User};
use rand::Rng;
use sha2::{Digest, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// How long an invitation can be accepted.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong e-mail address or password")]
    BadCredentials,
    #[error("too many failed logins; try again in {} s", .0.as_secs())]
    Throttled(Duration),
    #[error("{0}")]
    Invalid(String),
    /// Not there, or not the caller's to see (answered alike, as "not found").
    #[error("not found")]
    NotFound,
    /// The invited address already has a login: accept while logged in as it.
    #[error("{0} already has a login: log in as that address, then open the invitation again")]
    LogInFirst(String),
    #[error(transparent)]
    Store(#[from] footfall_meta::Error),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub session_ttl: Duration,
    /// Failed logins for one e-mail address within the window before logins for it
    /// are refused; from one client address, four times as many.
    pub max_failures: u32,
    pub failure_window: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
        }
    }
}

/// What may be done in an account, by the least role that may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the account's reports.
    View,
    /// Create and revoke API keys and shared links; change properties.
    Manage,
    /// Invite users and change their roles.
    ManageUsers,
}

/// Whether `role` may do `action`.
pub fn may(role: Role, action: Action) -> bool {
    role >= match action {
        Action::View => Role::Viewer,
        Action::Manage => Role::Admin,
        Action::ManageUsers => Role::Owner,
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The session cookie's value (shown once; only its hash is stored).
    pub token: String,
    pub csrf: String,
    pub user: User,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// One of a user's accounts, with the role held and its properties.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Membership {
    #[serde(flatten)]
    pub account: Account,
    pub role: Role,
    pub properties: Vec<String>,
}

/// Hashes a password (argon2id, random salt) into a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Invalid(e.to_string()))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .to_string())
}

/// Whether `password` matches a PHC string made by [`hash_password`].
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Whether a request's CSRF token is the session's.
pub fn check_csrf(session: &Session, sent: Option<&str>) -> bool {
    let Some(sent) = sent else { return false };
    let (a, b) = (session.csrf.as_bytes(), sent.as_bytes());
    // Constant time in the token's content.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Logins, sessions and what a user may see.
pub struct Auth {
    store: Arc<dyn AccountStore>,
    opts: AuthOptions,
    /// Verified against when the address is unknown, so that answering takes as long.
    dummy_hash: String,
}

impl Auth {
    pub fn new(store: Arc<dyn AccountStore>, opts: AuthOptions) -> Self {
        let dummy_hash = hash_password("not a password of anyone").expect("long enough");
        Self {
            store,
            opts,
            dummy_hash,
        }
    }

    pub fn store(&self) -> &Arc<dyn AccountStore> {
        &self.store
    }

    /// Checks a password and opens a session; `client` is the client's address (for
    /// throttling) and `now` Unix milliseconds.
    pub fn login(&self, email: &str, password: &str, client: &str, now: i64) -> Result<Login> {
        let email = email.trim().to_ascii_lowercase();
        let window = self.opts.failure_window.as_millis() as i64;
        let (by_email, by_client) = (format!("email:{email}"), format!("client:{client}"));
        let since = now - window;
        if self.store.login_failures(&by_email, since)? >= self.opts.max_failures
            || self.store.login_failures(&by_client, since)? >= self.opts.max_failures * 4
        {
            return Err(AuthError::Throttled(self.opts.failure_window));
        }
        let found = self.store.user_by_email(&email)?;
        let hash = found
            .as_ref()
            .map(|(_, h)| h.as_str())
            .unwrap_or(&self.dummy_hash);
        let ok = verify_password(hash, password) && found.is_some();
        let Some((user, _)) = found.filter(|_| ok) else {
            self.store.record_login_failure(&by_email, now)?;
            self.store.record_login_failure(&by_client, now)?;
            return Err(AuthError::BadCredentials);
        };
        self.store.clear_login_failures(&by_email)?;
        self.open_session(user, now)
    }

    fn open_session(&self, user: User, now: i64) -> Result<Login> {
        let (token, csrf) = (random_token(), random_token());
        let expires_at = now + self.opts.session_ttl.as_millis() as i64;
        self.store
            .create_session(&token_hash(&token), &user.id, &csrf, expires_at)?;
        Ok(Login {
            token,
            csrf,
            user,
            expires_at,
        })
    }

    /// The session a cookie names, if it is open at `now`.
    pub fn session(&self, token: &str, now: i64) -> Result<Option<Session>> {
        Ok(self.store.session(&token_hash(token), now)?)
    }

    pub fn logout(&self, token: &str) -> Result<()> {
        Ok(self.store.delete_session(&token_hash(token))?)
    }

    /// Sets a user's password and ends their sessions.
    pub fn set_password(&self, user: &User, password: &str) -> Result<()> {
        self.store
            .set_password(&user.id, &hash_password(password)?)?;
        Ok(self.store.delete_user_sessions(&user.id)?)
    }

    /// A new user with a password, member of `account` with `role`.
    pub fn create_user(
        &self,
        email: &str,
        password: &str,
        account: &str,
        role: Role,
    ) -> Result<User> {
        if self.store.account(account)?.is_none() {
            return Err(AuthError::Invalid(format!(
                "account `{account}` does not exist"
            )));
        }
        let user = self.store.create_user(email, &hash_password(password)?)?;
        self.store.add_member(account, &user.id, role)?;
        Ok(user)
    }

    /// A read-only link to a property: its token (shown once; only its hash is kept)
    /// and the link.
    pub fn create_share(&self, tracking_id: &str) -> Result<(String, footfall_meta::ShareLink)> {
        let token = random_token();
        let link = self.store.create_share(tracking_id, &token_hash(&token))?;
        Ok((token, link))
    }

    /// The property a share token opens, if its link exists.
    pub fn shared_property(&self, token: &str) -> Result<Option<String>> {
        Ok(self.store.shared_property(&token_hash(token))?)
    }

    /// The user's accounts, roles and properties.
    pub fn memberships(&self, user: &User) -> Result<Vec<Membership>> {
        self.store
            .memberships(&user.id)?
            .into_iter()
            .map(|(account, role)| {
                let properties = self.store.account_properties(&account.id)?;
                Ok(Membership {
                    account,
                    role,
                    properties,
                })
            })
            .collect()
    }

    /// The role the user holds in an account, if a member.
    pub fn role_in_account(&self, user: &User, account_id: &str) -> Result<Option<Role>> {
        Ok(self
            .store
            .memberships(&user.id)?
            .into_iter()
            .find(|(a, _)| a.id == account_id)
            .map(|(_, r)| r))
    }

    /// Fails with `NotFound` unless `user` may manage the account's users.
    fn owner_of(&self, user: &User, account_id: &str) -> Result<()> {
        match self.role_in_account(user, account_id)? {
            Some(r) if may(r, Action::ManageUsers) => Ok(()),
            _ => Err(AuthError::NotFound),
        }
    }

    /// An invitation to join `account_id` with `role`, made by one of its owners: the
    /// token (shown once; only its hash is kept) and the invitation.
    pub fn create_invite(
        &self,
        by: &User,
        account_id: &str,
        email: &str,
        role: Role,
        now: i64,
    ) -> Result<(String, Invite)> {
        self.owner_of(by, account_id)?;
        let email = footfall_meta::accounts::normalise_email(email)?;
        if let Some((u, _)) = self.store.user_by_email(&email)? {
            if self.role_in_account(&u, account_id)?.is_some() {
                return Err(AuthError::Invalid(format!(
                    "{email} is already a member of this account"
                )));
            }
        }
        let expires_at = now + INVITE_TTL.as_millis() as i64;
        let invite = footfall_meta::accounts::new_invite(account_id, &email, role, expires_at)?;
        let token = random_token();
        self.store.create_invite(&invite, &token_hash(&token))?;
        Ok((token, invite))
    }

    /// An account's pending invitations, for its owners.
    pub fn invites(&self, by: &User, account_id: &str) -> Result<Vec<Invite>> {
        self.owner_of(by, account_id)?;
        Ok(self.store.invites(account_id)?)
    }

    /// Withdraws an invitation; `NotFound` if there is none of that id in the account.
    pub fn revoke_invite(&self, by: &User, account_id: &str, id: &str) -> Result<()> {
        self.owner_of(by, account_id)?;
        match self.store.revoke_invite(account_id, id)? {
            true => Ok(()),
            false => Err(AuthError::NotFound),
        }
    }

    /// What an invitation token offers (left unused), with its account and whether its
    /// address already has a login.
    pub fn invite(&self, token: &str, now: i64) -> Result<(Invite, Account, bool)> {
        let invite = self
            .store
            .invite(&token_hash(token), now)?
            .ok_or(AuthError::NotFound)?;
        let account = self
            .store
            .account(&invite.account_id)?
            .ok_or(AuthError::NotFound)?;
        let exists = self.store.user_by_email(&invite.email)?.is_some();
        Ok((invite, account, exists))
    }

    /// Accepts an invitation: as the logged-in user `as_user` (whose address it must
    /// be), or, for an address without a login, by choosing `password` — which creates
    /// the user and logs them in. The invitation is used up; a role the user already
    /// holds in the account is never lowered by it.
    pub fn accept_invite(
        &self,
        token: &str,
        as_user: Option<&User>,
        password: Option<&str>,
        now: i64,
    ) -> Result<(User, Option<Login>)> {
        let (invite, _, exists) = self.invite(token, now)?;
        // Everything that can be refused is checked before the invitation is used up.
        enum Joiner<'a> {
            Existing(&'a User),
            New { password_hash: String },
        }
        let joiner = match as_user {
            Some(u) if u.email != invite.email => {
                return Err(AuthError::Invalid(format!(
                    "this invitation is for {}; log out and open it again",
                    invite.email
                )))
            }
            Some(u) => Joiner::Existing(u),
            None if exists => return Err(AuthError::LogInFirst(invite.email)),
            None => Joiner::New {
                password_hash: hash_password(password.unwrap_or(""))?,
            },
        };
        let invite = self
            .store
            .take_invite(&token_hash(token), now)?
            .ok_or(AuthError::NotFound)?;
        let (user, login) = match joiner {
            Joiner::Existing(u) => (u.clone(), None),
            Joiner::New { password_hash } => {
                let u = self.store.create_user(&invite.email, &password_hash)?;
                let login = self.open_session(u.clone(), now)?;
                (u, Some(login))
            }
        };
        let held = self.role_in_account(&user, &invite.account_id)?;
        let role = held.map_or(invite.role, |h| h.max(invite.role));
        self.store.add_member(&invite.account_id, &user.id, role)?;
        Ok((user, login))
    }

    /// The role the user holds over a property (through its account), or `None` when
    /// the property is not theirs to see — which callers answer as "not found".
    pub fn role_for_property(&self, user: &User, tracking_id: &str) -> Result<Option<Role>> {
        Ok(self
            .memberships(user)?
            .into_iter()
            .filter(|m| m.properties.iter().any(|p| p == tracking_id))
            .map(|m| m.role)
            .max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use footfall_meta::{MetaStore, SqliteMeta};

    fn setup() -> (tempfile::TempDir, Arc<SqliteMeta>, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(SqliteMeta::open(dir.path().join("meta.db")).unwrap());
        let auth = Auth::new(m.clone(), AuthOptions::default());
        (dir, m, auth)
    }

    #[test]
    fn passwords_are_argon2id_and_checked() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterx"));
        assert!(!verify_password("garbage", "x"));
        assert!(matches!(hash_password("short"), Err(AuthError::Invalid(_))));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn login_session_logout() {
        let (_d, m, auth) = setup();
        let a = m.create_account("Acme").unwrap();
        let u = auth
            .create_user("ann@acme.example", "a long password", &a.id, Role::Viewer)
            .unwrap();
        assert!(matches!(
            auth.login("ann@acme.example", "wrong password!", "1.2.3.4", 1_000),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.login("nobody@acme.example", "a long password", "1.2.3.4", 1_000),
            Err(AuthError::BadCredentials)
        ));
        let l = auth
            .login("Ann@Acme.example", "a long password", "1.2.3.4", 1_000)
            .unwrap();
        assert_eq!(l.user, u);
        assert_eq!(l.token.len(), 64);
        let s = auth.session(&l.token, 2_000).unwrap().expect("open");
        assert!(check_csrf(&s, Some(&l.csrf)));
        assert!(!check_csrf(&s, Some("x")));
        assert!(!check_csrf(&s, None));
        let ttl = AuthOptions::default().session_ttl.as_millis() as i64;
        assert!(
            auth.session(&l.token, 1_000 + ttl).unwrap().is_none(),
            "expired"
        );
        auth.logout(&l.token).unwrap();
        assert!(
            auth.session(&l.token, 2_000).unwrap().is_none(),
            "logged out"
        );
        // A password change ends every session.
        let l2 = auth
            .login("ann@acme.example", "a long password", "1.2.3.4", 3_000)
            .unwrap();
        auth.set_password(&u, "another long password").unwrap();
        assert!(auth.session(&l2.token, 3_001).unwrap().is_none());
        assert!(auth
            .login(
                "ann@acme.example",
                "another long password",
                "1.2.3.4",
                4_000
            )
            .is_ok());
    }

    #[test]
    fn repeated_failures_are_throttled_even_with_the_right_password() {
        let (_d, m, auth) = setup();
        let a = m.create_account("Acme").unwrap();
        auth.create_user("ann@acme.example", "a long password", &a.id, Role::Owner)
            .unwrap();
        for i in 0..5 {
            assert!(matches!(
                auth.login("ann@acme.example", "guess", "1.2.3.4", 1_000 + i),
                Err(AuthError::BadCredentials)
            ));
        }
        assert!(matches!(
            auth.login("ann@acme.example", "a long password", "5.6.7.8", 2_000),
            Err(AuthError::Throttled(_))
        ));
        // After the window, the right password works again and clears the count.
        let later = 2_000 + AuthOptions::default().failure_window.as_millis() as i64;
        assert!(auth
            .login("ann@acme.example", "a long password", "5.6.7.8", later)
            .is_ok());
        // One client guessing many addresses is stopped too.
        for i in 0..20 {
            let _ = auth.login(&format!("u{i}@acme.example"), "guess", "9.9.9.9", later);
        }
        assert!(matches!(
            auth.login("ann@acme.example", "a long password", "9.9.9.9", later + 1),
            Err(AuthError::Throttled(_))
        ));
    }

    #[test]
    fn users_see_their_accounts_properties_only() {
        let (_d, m, auth) = setup();
        let (a, b) = (
            m.create_account("A").unwrap(),
            m.create_account("B").unwrap(),
        );
        let pa = m.create_property("Shop A", "UTC", &[]).unwrap();
        let pb = m.create_property("Shop B", "UTC", &[]).unwrap();
        m.assign_property(&a.id, &pa.tracking_id).unwrap();
        m.assign_property(&b.id, &pb.tracking_id).unwrap();
        let u = auth
            .create_user("ann@a.example", "a long password", &a.id, Role::Admin)
            .unwrap();
        assert_eq!(
            auth.role_for_property(&u, &pa.tracking_id).unwrap(),
            Some(Role::Admin)
        );
        assert_eq!(auth.role_for_property(&u, &pb.tracking_id).unwrap(), None);
        let ms = auth.memberships(&u).unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].properties, vec![pa.tracking_id.clone()]);
        assert!(may(Role::Admin, Action::Manage) && !may(Role::Admin, Action::ManageUsers));
        assert!(may(Role::Viewer, Action::View) && !may(Role::Viewer, Action::Manage));
        assert!(may(Role::Owner, Action::ManageUsers));
    }

    #[test]
    fn owners_invite_and_the_invited_join_once() {
        let (_d, m, auth) = setup();
        let (a, b) = (
            m.create_account("A").unwrap(),
            m.create_account("B").unwrap(),
        );
        let owner = auth
            .create_user("own@a.example", "a long password", &a.id, Role::Owner)
            .unwrap();
        let admin = auth
            .create_user("adm@a.example", "a long password", &a.id, Role::Admin)
            .unwrap();
        let other = auth
            .create_user("own@b.example", "a long password", &b.id, Role::Owner)
            .unwrap();
        let now = 1_000_000;
        // Only an owner of the account invites; others are told "not found".
        for (who, account) in [(&admin, &a.id), (&other, &a.id), (&owner, &b.id)] {
            assert!(matches!(
                auth.create_invite(who, account, "new@a.example", Role::Viewer, now),
                Err(AuthError::NotFound)
            ));
        }
        assert!(matches!(
            auth.create_invite(&owner, &a.id, "adm@a.example", Role::Viewer, now),
            Err(AuthError::Invalid(_))
        ));
        let (token, inv) = auth
            .create_invite(&owner, &a.id, "New@A.example", Role::Admin, now)
            .unwrap();
        assert_eq!(inv.email, "new@a.example");
        assert_eq!(auth.invites(&owner, &a.id).unwrap(), vec![inv.clone()]);
        assert!(matches!(
            auth.invites(&other, &a.id),
            Err(AuthError::NotFound)
        ));
        let (seen, account, exists) = auth.invite(&token, now).unwrap();
        assert_eq!(
            (seen, account.id.as_str(), exists),
            (inv.clone(), a.id.as_str(), false)
        );
        // A short password is refused and leaves the invitation usable.
        assert!(auth
            .accept_invite(&token, None, Some("short"), now)
            .is_err());
        // Someone else's session cannot take it.
        assert!(auth.accept_invite(&token, Some(&other), None, now).is_err());
        let (user, login) = auth
            .accept_invite(&token, None, Some("another long one"), now)
            .unwrap();
        assert_eq!(user.email, "new@a.example");
        let login = login.expect("a new user is logged in");
        assert!(auth.session(&login.token, now).unwrap().is_some());
        assert_eq!(
            auth.role_in_account(&user, &a.id).unwrap(),
            Some(Role::Admin)
        );
        assert!(auth
            .login("new@a.example", "another long one", "c", now)
            .is_ok());
        // Used up.
        assert!(matches!(
            auth.accept_invite(&token, None, Some("another long one"), now),
            Err(AuthError::NotFound)
        ));
        // An address with a login joins while logged in as it; a role is not lowered.
        let (t2, _) = auth
            .create_invite(&other, &b.id, "adm@a.example", Role::Viewer, now)
            .unwrap();
        assert!(matches!(
            auth.accept_invite(&t2, None, Some("any long password"), now),
            Err(AuthError::LogInFirst(_))
        ));
        auth.accept_invite(&t2, Some(&admin), None, now).unwrap();
        assert_eq!(
            auth.role_in_account(&admin, &b.id).unwrap(),
            Some(Role::Viewer)
        );
        assert_eq!(
            auth.role_in_account(&admin, &a.id).unwrap(),
            Some(Role::Admin)
        );
        // Expired and revoked invitations open nothing.
        let (t3, i3) = auth
            .create_invite(&owner, &a.id, "late@a.example", Role::Viewer, now)
            .unwrap();
        let later = now + INVITE_TTL.as_millis() as i64;
        assert!(matches!(auth.invite(&t3, later), Err(AuthError::NotFound)));
        assert!(matches!(
            auth.revoke_invite(&other, &a.id, &i3.id),
            Err(AuthError::NotFound)
        ));
        auth.revoke_invite(&owner, &a.id, &i3.id).unwrap();
        assert!(matches!(auth.invite(&t3, now), Err(AuthError::NotFound)));
    }
}
