//! [`AccountStore`] on PostgreSQL: the same tables as the embedded store, so every query
//! node of a cluster knows every user and session.

use footfall_meta::accounts::{new_account, new_share, new_user, normalise_email};
use footfall_meta::{
    now_text, Account, AccountStore, Error, Invite, Result, Role, Session, ShareLink, User,
};

use crate::meta::PgMeta;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_account_properties (
    tracking_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_memberships (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE TABLE IF NOT EXISTS ff_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_login_failures (
    key TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ff_login_failures_key ON ff_login_failures (key, at);
CREATE TABLE IF NOT EXISTS ff_share_links (
    id TEXT PRIMARY KEY,
    tracking_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ff_invites (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
";

impl AccountStore for PgMeta {
    fn create_account(&self, name: &str) -> Result<Account> {
        let a = new_account(name)?;
        let b = a.clone();
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_accounts (id, name, created_at) VALUES ($1, $2, $3)",
                &[&b.id, &b.name, &now_text()],
            )
        })?;
        Ok(a)
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        let id = id.to_string();
        Ok(self.pool.call(move |c| {
            Ok(
                c.query_opt("SELECT id, name FROM ff_accounts WHERE id = $1", &[&id])?
                    .map(|r| Account {
                        id: r.get(0),
                        name: r.get(1),
                    }),
            )
        })?)
    }

    fn assign_property(&self, account_id: &str, tracking_id: &str) -> Result<()> {
        let (a, p) = (account_id.to_string(), tracking_id.to_string());
        let missing = self.pool.call(move |c| {
            let mut t = c.transaction()?;
            if t.query_opt("SELECT 1 FROM ff_accounts WHERE id = $1", &[&a])?
                .is_none()
            {
                return Ok(Some(Error::Invalid(format!(
                    "account `{a}` does not exist"
                ))));
            }
            if t.query_opt("SELECT 1 FROM ff_properties WHERE tracking_id = $1", &[&p])?
                .is_none()
            {
                return Ok(Some(Error::NoSuchProperty(p.clone())));
            }
            t.execute(
                "INSERT INTO ff_account_properties (tracking_id, account_id) VALUES ($1, $2)
                 ON CONFLICT (tracking_id) DO UPDATE SET account_id = EXCLUDED.account_id",
                &[&p, &a],
            )?;
            t.commit()?;
            Ok(None)
        })?;
        missing.map_or(Ok(()), Err)
    }

    fn account_properties(&self, account_id: &str) -> Result<Vec<String>> {
        let a = account_id.to_string();
        Ok(self.pool.call(move |c| {
            Ok(c.query(
                "SELECT tracking_id FROM ff_account_properties WHERE account_id = $1 ORDER BY tracking_id",
                &[&a],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })?)
    }

    fn create_user(&self, email: &str, password_hash: &str) -> Result<User> {
        let u = new_user(email)?;
        let (v, h) = (u.clone(), password_hash.to_string());
        let n = self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (email) DO NOTHING",
                &[&v.id, &v.email, &h, &now_text()],
            )
        })?;
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
        Ok(self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT id, email, password_hash FROM ff_users WHERE email = $1",
                &[&email],
            )?
            .map(|r| {
                (
                    User {
                        id: r.get(0),
                        email: r.get(1),
                    },
                    r.get(2),
                )
            }))
        })?)
    }

    fn set_password(&self, user_id: &str, password_hash: &str) -> Result<()> {
        let (u, h) = (user_id.to_string(), password_hash.to_string());
        let n = self.pool.call(move |c| {
            c.execute(
                "UPDATE ff_users SET password_hash = $2 WHERE id = $1",
                &[&u, &h],
            )
        })?;
        if n == 0 {
            return Err(Error::Invalid(format!("user `{user_id}` does not exist")));
        }
        Ok(())
    }

    fn add_member(&self, account_id: &str, user_id: &str, role: Role) -> Result<()> {
        let (a, u) = (account_id.to_string(), user_id.to_string());
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_memberships (account_id, user_id, role) VALUES ($1, $2, $3)
                 ON CONFLICT (account_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                &[&a, &u, &role.as_str()],
            )
        })?;
        Ok(())
    }

    fn memberships(&self, user_id: &str) -> Result<Vec<(Account, Role)>> {
        let u = user_id.to_string();
        let rows: Vec<(Account, String)> = self.pool.call(move |c| {
            Ok(c.query(
                "SELECT a.id, a.name, m.role FROM ff_memberships m
                 JOIN ff_accounts a ON a.id = m.account_id
                 WHERE m.user_id = $1 ORDER BY a.name, a.id",
                &[&u],
            )?
            .iter()
            .map(|r| {
                (
                    Account {
                        id: r.get(0),
                        name: r.get(1),
                    },
                    r.get(2),
                )
            })
            .collect())
        })?;
        rows.into_iter()
            .map(|(a, r)| Ok((a, Role::parse(&r)?)))
            .collect()
    }

    fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()> {
        let (t, u, x) = (
            token_hash.to_string(),
            user_id.to_string(),
            csrf.to_string(),
        );
        self.pool.call(move |c| {
            // Expired sessions go as new ones come.
            c.execute(
                "DELETE FROM ff_sessions WHERE expires_at < $1",
                &[&(expires_at - 30 * 86_400_000)],
            )?;
            c.execute(
                "INSERT INTO ff_sessions (token_hash, user_id, csrf, expires_at) VALUES ($1, $2, $3, $4)",
                &[&t, &u, &x, &expires_at],
            )
        })?;
        Ok(())
    }

    fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>> {
        let t = token_hash.to_string();
        Ok(self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT u.id, u.email, s.csrf, s.expires_at FROM ff_sessions s
                 JOIN ff_users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
                &[&t, &now],
            )?
            .map(|r| Session {
                user: User {
                    id: r.get(0),
                    email: r.get(1),
                },
                csrf: r.get(2),
                expires_at: r.get(3),
            }))
        })?)
    }

    fn delete_session(&self, token_hash: &str) -> Result<()> {
        let t = token_hash.to_string();
        self.pool
            .call(move |c| c.execute("DELETE FROM ff_sessions WHERE token_hash = $1", &[&t]))?;
        Ok(())
    }

    fn delete_user_sessions(&self, user_id: &str) -> Result<()> {
        let u = user_id.to_string();
        self.pool
            .call(move |c| c.execute("DELETE FROM ff_sessions WHERE user_id = $1", &[&u]))?;
        Ok(())
    }

    fn record_login_failure(&self, key: &str, at: i64) -> Result<()> {
        let k = key.to_string();
        self.pool.call(move |c| {
            c.execute(
                "DELETE FROM ff_login_failures WHERE at < $1",
                &[&(at - 86_400_000)],
            )?;
            c.execute(
                "INSERT INTO ff_login_failures (key, at) VALUES ($1, $2)",
                &[&k, &at],
            )
        })?;
        Ok(())
    }

    fn login_failures(&self, key: &str, since: i64) -> Result<u32> {
        let k = key.to_string();
        let n: i64 = self.pool.call(move |c| {
            Ok(c.query_one(
                "SELECT count(*) FROM ff_login_failures WHERE key = $1 AND at >= $2",
                &[&k, &since],
            )?
            .get(0))
        })?;
        Ok(n as u32)
    }

    fn clear_login_failures(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        self.pool
            .call(move |c| c.execute("DELETE FROM ff_login_failures WHERE key = $1", &[&k]))?;
        Ok(())
    }

    fn create_share(&self, tracking_id: &str, token_hash: &str) -> Result<ShareLink> {
        let l = new_share(tracking_id);
        let (m, h) = (l.clone(), token_hash.to_string());
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_share_links (id, tracking_id, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                &[&m.id, &m.tracking_id, &h, &m.created_at],
            )
        })?;
        Ok(l)
    }

    fn shares(&self, tracking_id: &str) -> Result<Vec<ShareLink>> {
        let t = tracking_id.to_string();
        Ok(self.pool.call(move |c| {
            Ok(c.query(
                "SELECT id, tracking_id, created_at FROM ff_share_links WHERE tracking_id = $1 ORDER BY created_at, id",
                &[&t],
            )?
            .iter()
            .map(|r| ShareLink {
                id: r.get(0),
                tracking_id: r.get(1),
                created_at: r.get(2),
            })
            .collect())
        })?)
    }

    fn shared_property(&self, token_hash: &str) -> Result<Option<String>> {
        let h = token_hash.to_string();
        Ok(self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT tracking_id FROM ff_share_links WHERE token_hash = $1",
                &[&h],
            )?
            .map(|r| r.get(0)))
        })?)
    }

    fn revoke_share(&self, tracking_id: &str, id: &str) -> Result<bool> {
        let (t, i) = (tracking_id.to_string(), id.to_string());
        Ok(self.pool.call(move |c| {
            Ok(c.execute(
                "DELETE FROM ff_share_links WHERE tracking_id = $1 AND id = $2",
                &[&t, &i],
            )? > 0)
        })?)
    }

    fn create_invite(&self, i: &Invite, token_hash: &str) -> Result<()> {
        let (i, h) = (i.clone(), token_hash.to_string());
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO ff_invites (id, account_id, email, role, token_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&i.id, &i.account_id, &i.email, &i.role.as_str(), &h, &i.created_at, &i.expires_at],
            )
        })?;
        Ok(())
    }

    fn invites(&self, account_id: &str) -> Result<Vec<Invite>> {
        let a = account_id.to_string();
        let rows = self.pool.call(move |c| {
            Ok(c.query(
                "SELECT id, account_id, email, role, created_at, expires_at FROM ff_invites
                 WHERE account_id = $1 ORDER BY created_at, id",
                &[&a],
            )?
            .iter()
            .map(invite_row)
            .collect::<Vec<_>>())
        })?;
        rows.into_iter().map(Invite::from_row).collect()
    }

    fn invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>> {
        let h = token_hash.to_string();
        let row = self.pool.call(move |c| {
            Ok(c.query_opt(
                "SELECT id, account_id, email, role, created_at, expires_at FROM ff_invites
                 WHERE token_hash = $1 AND expires_at > $2",
                &[&h, &now],
            )?
            .map(|r| invite_row(&r)))
        })?;
        row.map(Invite::from_row).transpose()
    }

    fn take_invite(&self, token_hash: &str, now: i64) -> Result<Option<Invite>> {
        let h = token_hash.to_string();
        // One statement: a second taker finds nothing to delete.
        let row = self.pool.call(move |c| {
            Ok(c.query_opt(
                "DELETE FROM ff_invites WHERE token_hash = $1
                 RETURNING id, account_id, email, role, created_at, expires_at",
                &[&h],
            )?
            .map(|r| invite_row(&r)))
        })?;
        Ok(row
            .map(Invite::from_row)
            .transpose()?
            .filter(|i| i.expires_at > now))
    }

    fn revoke_invite(&self, account_id: &str, id: &str) -> Result<bool> {
        let (a, i) = (account_id.to_string(), id.to_string());
        Ok(self.pool.call(move |c| {
            Ok(c.execute(
                "DELETE FROM ff_invites WHERE account_id = $1 AND id = $2",
                &[&a, &i],
            )? > 0)
        })?)
    }
}

/// An `ff_invites` row as [`InviteRow`](footfall_meta::accounts::InviteRow).
fn invite_row(r: &postgres::Row) -> footfall_meta::accounts::InviteRow {
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}
