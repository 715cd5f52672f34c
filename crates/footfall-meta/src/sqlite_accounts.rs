//! [`AccountStore`] on the embedded SQLite metadata file.

use rusqlite::{params, OptionalExtension};

use crate::accounts::{
    new_account, new_share, new_user, normalise_email, Account, AccountStore, Invite, Role,
    Session, ShareLink, User,
};
use crate::{now_text, Error, Result, SqliteMeta};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_properties (
    tracking_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);
CREATE TABLE IF NOT EXISTS share_links (
    id TEXT PRIMARY KEY,
    tracking_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
";

impl AccountStore for SqliteMeta {
    fn create_account(&self, name: &str) -> Result<Account> {
        let a = new_account(name)?;
        self.conn.lock().unwrap().execute(
            "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
            params![a.id, a.name, now_text()],
        )?;
        Ok(a)
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT id, name FROM accounts WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Account {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn assign_property(&self, account_id: &str, tracking_id: &str) -> Result<()> {
        let mut c = self.conn.lock().unwrap();
        let t = c.transaction()?;
        let exists = |sql: &str, id: &str| -> Result<bool> {
            Ok(t.query_row(sql, params![id], |_| Ok(()))
                .optional()?
                .is_some())
        };
        if !exists("SELECT 1 FROM accounts WHERE id = ?1", account_id)? {
            return Err(Error::Invalid(format!(
                "account `{account_id}` does not exist"
            )));
        }
        if !exists(
            "SELECT 1 FROM properties WHERE tracking_id = ?1",
            tracking_id,
        )? {
            return Err(Error::NoSuchProperty(tracking_id.into()));
        }
        t.execute(
            "INSERT INTO account_properties (tracking_id, account_id) VALUES (?1, ?2)
             ON CONFLICT (tracking_id) DO UPDATE SET account_id = excluded.account_id",
            params![tracking_id, account_id],
        )?;
        t.commit()?;
        Ok(())
    }

    fn account_properties(&self, account_id: &str) -> Result<Vec<String>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare(
            "SELECT tracking_id FROM account_properties WHERE account_id = ?1 ORDER BY tracking_id",
        )?;
        let rows = st.query_map(params![account_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn create_user(&self, email: &str, password_hash: &str) -> Result<User> {
        let u = new_user(email)?;
        let n = self.conn.lock().unwrap().execute(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (email) DO NOTHING",
            params![u.id, u.email, password_hash, now_text()],
        )?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "a user with address {} exists",
                u.email
            )));
        }
        Ok(u)
    }

    fn user_by_email(&self, email: &str) -> Result<Option<(User, String)>> {
        let Ok(email) = normalise_email(email) else {
            return Ok(None);
        };
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT id, email, password_hash FROM users WHERE email = ?1",
                params![email],
                |r| {
                    Ok((
                        User {
                            id: r.get(0)?,
                            email: r.get(1)?,
                        },
                        r.get(2)?,
                    ))
                },
            )
            .optional()?)
    }

    fn set_password(&self, user_id: &str, password_hash: &str) -> Result<()> {
        let n = self.conn.lock().unwrap().execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            params![user_id, password_hash],
        )?;
        if n == 0 {
            return Err(Error::Invalid(format!("user `{user_id}` does not exist")));
        }
        Ok(())
    }

    fn add_member(&self, account_id: &str, user_id: &str, role: Role) -> Result<()> {
        self.conn.lock().unwrap().execute(
            "INSERT INTO memberships (account_id, user_id, role) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id, user_id) DO UPDATE SET role = excluded.role",
            params![account_id, user_id, role.as_str()],
        )?;
        Ok(())
    }

    fn memberships(&self, user_id: &str) -> Result<Vec<(Account, Role)>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare(
            "SELECT a.id, a.name, m.role FROM memberships m JOIN accounts a ON a.id = m.account_id
             WHERE m.user_id = ?1 ORDER BY a.name, a.id",
        )?;
        let rows = st.query_map(params![user_id], |r| {
            Ok((
                Account {
                    id: r.get(0)?,
                    name: r.get(1)?,
                },
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (a, role) = r?;
            Ok((a, Role::parse(&role)?))
        })
        .collect()
    }

    fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()> {
        let c = self.conn.lock().unwrap();
        // Expired sessions go as new ones come.
        c.execute(
            "DELETE FROM sessions WHERE expires_at < ?1",
            params![expires_at - 30 * 86_400_000],
        )?;
        c.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user_id, csrf, expires_at],
        )?;
        Ok(())
    }

    fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT u.id, u.email, s.csrf, s.expires_at FROM sessions s
                 JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1 AND s.expires_at > ?2",
                params![token_hash, now],
                |r| {
                    Ok(Session {
                        user: User {
                            id: r.get(0)?,
                            email: r.get(1)?,
                        },
                        csrf: r.get(2)?,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn delete_session(&self, token_hash: &str) -> Result<()> {
        self.conn.lock().unwrap().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![token_hash],
        )?;
        Ok(())
    }

    fn delete_user_sessions(&self, user_id: &str) -> Result<()> {
        self.conn
            .lock()
            .unwrap()
            .execute("DELETE FROM sessions WHERE user_id = ?1", params![user_id])?;
        Ok(())
    }

    fn record_login_failure(&self, key: &str, at: i64) -> Result<()> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "DELETE FROM login_failures WHERE at < ?1",
            params![at - 86_400_000],
        )?;
        c.execute(
            "INSERT INTO login_failures (key, at) VALUES (?1, ?2)",
            params![key, at],
        )?;
        Ok(())
    }

    fn login_failures(&self, key: &str, since: i64) -> Result<u32> {
        Ok(self.conn.lock().unwrap().query_row(
            "SELECT count(*) FROM login_failures WHERE key = ?1 AND at >= ?2",
            params![key, since],
            |r| r.get(0),
        )?)
    }

    fn clear_login_failures(&self, key: &str) -> Result<()> {
        self.conn
            .lock()
            .unwrap()
            .execute("DELETE FROM login_failures WHERE key = ?1", params![key])?;
        Ok(())
    }

    fn create_share(&self, tracking_id: &str, token_hash: &str) -> Result<ShareLink> {
        let l = new_share(tracking_id);
        self.conn.lock().unwrap().execute(
            "INSERT INTO share_links (id, tracking_id, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![l.id, l.tracking_id, token_hash, l.created_at],
        )?;
        Ok(l)
    }

    fn shares(&self, tracking_id: &str) -> Result<Vec<ShareLink>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare(
            "SELECT id, tracking_id, created_at FROM share_links WHERE tracking_id = ?1 ORDER BY created_at, id",
        )?;
        let rows = st.query_map(params![tracking_id], |r| {
            Ok(ShareLink {
                id: r.get(0)?,
                tracking_id: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn shared_property(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT tracking_id FROM share_links WHERE token_hash = ?1",
                params![token_hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn revoke_share(&self, tracking_id: &str, id: &str) -> Result<bool> {
        Ok(self.conn.lock().unwrap().execute(
            "DELETE FROM share_links WHERE tracking_id = ?1 AND id = ?2",
            params![tracking_id, id],
        )? > 0)
    }

    fn create_invite(&self, i: &Invite, token_hash: &str) -> Result<()> {
        self.conn.lock().unwrap().execute(
            "INSERT INTO invites (id, account_id, email, role, token_hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                i.id,
                i.account_id,
                i.email,
                i.role.as_str(),
                token_hash,
                i.created_at,
                i.expires_at
            ],
        )?;
        Ok(())
    }

    fn invites(&self, account_id: &str) -> Result<Vec<Invite>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare(
            "SELECT id, account_id, email, role, created_at, expires_at FROM invites
             WHERE account_id = ?1 ORDER BY created_at, id",
        )?;
        let rows = st.query_map(params![account_id], invite_row)?;
        rows.map(|r| Invite::from_row(r?)).collect()
    }

    fn invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>> {
        let row = self
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT id, account_id, email, role, created_at, expires_at FROM invites
                 WHERE token_hash = ?1 AND expires_at > ?2",
                params![token_hash, now],
                invite_row,
            )
            .optional()?;
        row.map(Invite::from_row).transpose()
    }

    fn take_invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>> {
        let mut c = self.conn.lock().unwrap();
        let t = c.transaction()?;
        let found = t
            .query_row(
                "SELECT id, account_id, email, role, created_at, expires_at FROM invites
                 WHERE token_hash = ?1",
                params![token_hash],
                invite_row,
            )
            .optional()?
            .map(Invite::from_row)
            .transpose()?;
        t.execute(
            "DELETE FROM invites WHERE token_hash = ?1",
            params![token_hash],
        )?;
        t.commit()?;
        Ok(found.filter(|i| i.expires_at > now))
    }

    fn revoke_invite(&self, account_id: &str, id: &str) -> Result<bool> {
        Ok(self.conn.lock().unwrap().execute(
            "DELETE FROM invites WHERE account_id = ?1 AND id = ?2",
            params![account_id, id],
        )? > 0)
    }
}

/// An `invites` row as [`InviteRow`](crate::accounts::InviteRow).
fn invite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::accounts::InviteRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}
