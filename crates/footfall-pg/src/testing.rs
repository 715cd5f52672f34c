//! Databases for tests: each test gets a database of its own on the server named by
//! `FOOTFALL_TEST_PG_URL` (started by `scripts/pg.sh`; CI always sets it), dropped at the
//! end.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use postgres::{Config, NoTls};

/// The variable that names the test server.
pub const URL_VAR: &str = "FOOTFALL_TEST_PG_URL";

/// A fresh database, dropped (with its connections) when this is dropped.
pub struct TestDb {
    admin: Config,
    name: String,
    url: String,
}

impl TestDb {
    /// A new empty database, or `None` (said loudly) when no test server is configured.
    /// Under CI (`CI=true`) a missing server is a failure, not a skip.
    pub fn create(test: &str) -> Option<TestDb> {
        let Ok(url) = std::env::var(URL_VAR) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{URL_VAR} is not set under CI: run the tests through scripts/test.sh");
            }
            eprintln!(
                "\n*** SKIPPED {test}: {URL_VAR} is not set (scripts/pg.sh start prints one) ***\n"
            );
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ff_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let admin = Config::from_str(&url).expect("FOOTFALL_TEST_PG_URL is a postgres URL");
        admin_statement(&admin, format!("CREATE DATABASE {name}"))
            .expect("create a test database on FOOTFALL_TEST_PG_URL");
        let url = replace_database(&url, &name);
        Some(TestDb { admin, name, url })
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `url` with its database replaced by `db` (URLs with or without a database path).
pub fn replace_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs one statement on its own thread: the client blocks on a runtime of its own,
/// which must not happen on an async test's thread.
fn admin_statement(admin: &Config, sql: String) -> Result<(), postgres::Error> {
    let admin = admin.clone();
    std::thread::spawn(move || admin.connect(NoTls)?.batch_execute(&sql))
        .join()
        .expect("admin statement thread")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin_statement(
            &self.admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_in_url_is_replaced() {
        use super::replace_database as r;
        assert_eq!(
            r("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(r("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            r("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
