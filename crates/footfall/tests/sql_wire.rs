//! The PostgreSQL wire protocol against the running server (docs/SQL.md): Debian's psql
//! (simple protocol, `\dt`, `\d`) and psycopg from PyPI (extended protocol, bound
//! parameters, a prepared statement, the `information_schema` and `pg_catalog` queries
//! BI tools send at connect), TLS, logins refused, the time and memory limits, escape
//! attempts (kept below as a list), and answers equal to the query API's.
//!
//! Needs psql and the test venv's psycopg (scripts/test.sh); skipped loudly without
//! them, failed under CI.

#![cfg(feature = "columnar")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Statements that try to reach another property, files, settings or writes. `{other}`
/// is the other property's tracking id, `{data}` the data directory. Those marked `true`
/// must be refused; the others may answer, but nothing of the other property's.
const ESCAPES: &[(&str, bool)] = &[
    (r#"SELECT * FROM "{other}".public.events"#, true),
    (r#"SELECT * FROM "{other}".public.visits"#, true),
    // The engine answers `information_schema` under any catalog name, from this
    // connection's one catalog.
    (r#"SELECT table_catalog FROM "{other}".information_schema.tables"#, false),
    (r#"EXPLAIN SELECT * FROM "{other}".public.events"#, true),
    ("SELECT * FROM datafusion.public.events", true),
    ("SELECT * FROM '{data}/archive/columns/property={other}'", true),
    ("SELECT * FROM 'file://{data}/archive/columns/property={other}/'", true),
    ("SELECT * FROM read_parquet('{data}/archive/columns/property={other}')", true),
    ("SELECT * FROM parquet_metadata('{data}/archive/columns/property={other}')", true),
    ("SELECT pg_read_file('/etc/passwd')", true),
    ("CREATE EXTERNAL TABLE stolen STORED AS PARQUET LOCATION '{data}/archive/columns/property={other}/'", true),
    ("COPY (SELECT 1) TO '/tmp/footfall-wire-escape.csv'", true),
    ("COPY events TO '/tmp/footfall-wire-escape.parquet'", true),
    ("SET datafusion.runtime.memory_limit = '100G'", true),
    ("SET datafusion.catalog.default_catalog = '{other}'", true),
    ("SELECT * INTO stolen FROM events", true),
    ("CREATE TABLE stolen AS SELECT * FROM events", true),
    ("CREATE VIEW stolen AS SELECT 1", true),
    ("CREATE SCHEMA stolen", true),
    ("INSERT INTO events SELECT * FROM events", true),
    ("DELETE FROM events", true),
    ("DROP TABLE events", true),
    ("DROP VIEW visits", true),
    ("SELECT table_catalog, table_name FROM information_schema.tables", false),
    ("SELECT * FROM information_schema.schemata", false),
    ("SELECT datname FROM pg_catalog.pg_database", false),
    ("SELECT * FROM pg_catalog.pg_tables", false),
    ("SELECT * FROM pg_catalog.pg_namespace", false),
    ("SHOW TABLES", false),
    ("SELECT * FROM information_schema.df_settings", false),
    // Nested past what the parser takes in bounded time (52 s unguarded): 54001.
    ("SELECT CAST(CASE (CAST(CASE (CAST(CASE (CAST(CASE (CAST(CASE (CAST(CASE (CAST(CASE (CAST(CASE (x))))))))))))))))))))))))", true),
    // CASE with no END, parsed again with CASE as a name at every level (minutes
    // unguarded): a syntax error, 42601, before parsing.
    ("SELECT CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +CASE WHEN CASE +1", true),
    // Dotted names whose subscripts fail, parsed again at every dot (minutes unguarded):
    // past the parser's work budget, 54001.
    ("SELECT a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a[+]", true),
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prerequisites() -> Option<String> {
    let python = test_python()?;
    let psql = Command::new("psql").arg("--version").output().is_ok();
    let psycopg = Command::new(&python)
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    if psql && psycopg {
        return Some(python);
    }
    let msg = format!("wire-protocol test: psql present: {psql}, psycopg present: {psycopg} (scripts/test.sh installs psycopg; psql comes with PostgreSQL)");
    if std::env::var("CI").is_ok() {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    None
}

/// psql with `key` as the password; its stdout, or its stderr as the error.
fn psql(conninfo: &str, key: &str, command: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-At", conninfo, "-c", command])
        .env("PGPASSWORD", key)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_read_their_property_and_nothing_else() {
    let Some(python) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (a, b) = (create_site(data, "UTC"), create_site(data, "UTC"));
    // A self-signed certificate: TLS is offered when one is configured.
    let (cert, key) = (data.join("wire.crt"), data.join("wire.key"));
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(
        data,
        &[
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__REFRESH_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__PG_LISTEN", &listen),
            ("FOOTFALL_COLUMNAR__PG_TLS_CERT", cert.to_str().unwrap()),
            ("FOOTFALL_COLUMNAR__PG_TLS_KEY", key.to_str().unwrap()),
            // Small, so that the memory limit shows on a few million values.
            ("FOOTFALL_COLUMNAR__SQL_MEMORY_MIB", "16"),
        ],
    );
    let c = reqwest::Client::new();
    // A: six visitors on /, three also on /pricing, from two sources. B: its own pages.
    let mut events = Vec::new();
    for v in 0..6 {
        let referrer = if v % 2 == 0 {
            "https://www.google.com/"
        } else {
            "https://duckduckgo.com/"
        };
        events.push(json!({"tracking_id": a.tracking_id, "name": "pageview", "client_id": format!("v{v}"), "url": "https://a.example/", "referrer": referrer}));
        if v < 3 {
            events.push(json!({"tracking_id": a.tracking_id, "name": "pageview", "client_id": format!("v{v}"), "url": "https://a.example/pricing"}));
        }
    }
    let b_events: Vec<Value> = (0..4)
        .map(|v| json!({"tracking_id": b.tracking_id, "name": "pageview", "client_id": format!("w{v}"), "url": "https://b.example/secret-b"}))
        .collect();
    let na = post_events(&c, &server.url, &a.write_key, &json!(events)).await;
    let nb = post_events(&c, &server.url, &b.write_key, &json!(b_events)).await;
    wait_for_events(&c, &server.url, &a, json!("7d"), na).await;
    wait_for_events(&c, &server.url, &b, json!("7d"), nb).await;

    let conninfo = |db: &str, ssl: &str| {
        format!("host=127.0.0.1 port={port} dbname={db} user=analyst sslmode={ssl}")
    };
    let plain = conninfo(&a.tracking_id, "disable");
    // The files are made from the archive within a second or so: poll through psql.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match psql(&plain, &a.read_key, "SELECT count(*) FROM events") {
            Ok(n) if n.trim() == na.to_string() => break,
            other => assert!(
                Instant::now() < deadline,
                "psql never saw {na} events: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // psql: the simple protocol, its catalog commands, TLS.
    let tables = psql(&plain, &a.read_key, r"\dt").unwrap();
    assert!(tables.contains("|events|"), "{tables}");
    let views = psql(&plain, &a.read_key, r"\dv").unwrap();
    assert!(views.contains("|visits|"), "{views}");
    let described = psql(&plain, &a.read_key, r"\d events").unwrap();
    assert!(
        described.contains("visitor|numeric||not null|"),
        "{described}"
    );
    let tls = conninfo(&a.tracking_id, "require");
    assert_eq!(
        psql(&tls, &a.read_key, "SELECT count(*) FROM visits")
            .unwrap()
            .trim(),
        "6"
    );
    let wrong = psql(&plain, &b.read_key, "SELECT 1").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");

    // psycopg: everything else (tests/sql_wire/client.py).
    let escapes: Vec<String> = ESCAPES
        .iter()
        .map(|(sql, _)| {
            sql.replace("{other}", &b.tracking_id)
                .replace("{data}", data.to_str().unwrap())
        })
        .collect();
    let cfg = json!({
        "port": port, "db": a.tracking_id, "key": a.read_key, "write_key": a.write_key,
        "other_key": b.read_key, "escapes": escapes,
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql_wire/client.py");
    let out = run_ok(Command::new(&python).arg(&script).arg(cfg.to_string()));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = |k: &str| v[k].to_string();

    for (who, why) in v["refused_logins"].as_object().unwrap() {
        let why = why.as_str().unwrap();
        assert!(
            why.contains("password authentication failed"),
            "{who}: {why}"
        );
    }
    // libpq's default sslmode (prefer) takes TLS when the server offers it.
    assert_eq!(v["tls"], true);
    assert_eq!(v["current"], json!([a.tracking_id, "public"]));
    assert_eq!(
        v["information_schema_tables"],
        json!([["events", "BASE TABLE"], ["visits", "VIEW"]])
    );
    assert_eq!(v["visits_columns"][0], "visit_id");
    assert_eq!(v["pg_class"], json!([["events", "r"], ["visits", "v"]]));
    let databases = v["pg_database"].to_string();
    assert!(
        databases.contains(&a.tracking_id) && !databases.contains(&b.tracking_id),
        "{databases}"
    );
    assert!(
        shown("pg_attribute_events").contains("\"visitor\""),
        "{}",
        shown("pg_attribute_events")
    );

    // A BI tool's connect sequence: every setting taken, the tables listed.
    let tool = &v["bi_tool"];
    for (sql, answer) in tool.as_object().unwrap() {
        if sql.starts_with("SET") || sql.starts_with("SHOW") {
            assert_eq!(answer, "ok", "{sql}");
        }
    }
    assert_eq!(tool["schemas"], json!(["pg_catalog", "public"]), "{tool}");
    assert_eq!(
        tool["tables"],
        json!([["public", "events", "TABLE"], ["public", "visits", "VIEW"]]),
        "{tool}"
    );
    assert_eq!(
        tool["search_path_tables"],
        json!(["events", "visits"]),
        "{tool}"
    );
    assert_eq!(tool["visitor_column"][0][0], "visitor", "{tool}");

    // Answers equal to the query API's for the same questions.
    assert_eq!(v["param_pricing_pageviews"], 3);
    assert_eq!(v["prepared_on_server"], true);
    let by_page = query(&c, &server.url, &a, json!({"site_id": a.tracking_id, "metrics": ["pageviews"], "date_range": "7d", "dimensions": ["event:page"]})).await;
    let want: serde_json::Map<String, Value> = counts_by_dimension(&by_page)
        .into_iter()
        .map(|(k, n)| (k, json!(n)))
        .collect();
    assert_eq!(v["pageviews_by_page"], Value::Object(want), "{by_page}");
    let visitors_by_page = query(&c, &server.url, &a, json!({"site_id": a.tracking_id, "metrics": ["visitors"], "date_range": "7d", "dimensions": ["event:page"]})).await;
    let visitors = counts_by_dimension(&visitors_by_page);
    assert_eq!(v["prepared_visitors"]["/"], json!(visitors["/"]));
    assert_eq!(
        v["prepared_visitors"]["/pricing"],
        json!(visitors["/pricing"])
    );
    assert_eq!(v["prepared_visitors"]["/nothing-here"], 0);
    let totals = query(
        &c,
        &server.url,
        &a,
        json!({"site_id": a.tracking_id, "metrics": ["visitors", "pageviews"], "date_range": "7d"}),
    )
    .await;
    assert_eq!(v["totals"], totals["results"][0]["metrics"], "{totals}");
    let sources = query(&c, &server.url, &a, json!({"site_id": a.tracking_id, "metrics": ["visits"], "date_range": "7d", "dimensions": ["visit:source"]})).await;
    let want: serde_json::Map<String, Value> = counts_by_dimension(&sources)
        .into_iter()
        .map(|(k, n)| (k, json!(n)))
        .collect();
    assert_eq!(v["visits_by_source"], Value::Object(want), "{sources}");

    // Escapes: refused, or nothing of B's.
    let seen = v["escapes"].as_array().unwrap();
    assert_eq!(seen.len(), ESCAPES.len());
    let mut refused = 0;
    for (attempt, (_, must_fail)) in seen.iter().zip(ESCAPES) {
        let text = attempt["text"].as_str().unwrap();
        if attempt["ok"] == true {
            assert!(!must_fail, "not refused: {}", attempt["sql"]);
            assert!(
                !text.contains(&b.tracking_id) && !text.contains("secret-b"),
                "another property's data or name: {attempt}"
            );
        } else {
            refused += 1;
            let state = attempt["sqlstate"].as_str().unwrap_or("");
            assert!(
                ["42501", "42P01", "42000", "42703", "54001", "42601"].contains(&state),
                "refused without saying why: {attempt}"
            );
        }
    }
    eprintln!(
        "escapes: {} tried, {refused} refused, the rest answered nothing of another property's",
        seen.len()
    );
    assert!(!std::path::Path::new("/tmp/footfall-wire-escape.csv").exists());
    assert!(!std::path::Path::new("/tmp/footfall-wire-escape.parquet").exists());

    // Limits.
    assert_eq!(v["timeout"]["error"], "57014", "{}", shown("timeout"));
    assert!(
        v["timeout"]["seconds"].as_f64().unwrap() < 3.0,
        "{}",
        shown("timeout")
    );
    assert_eq!(v["after_timeout"], 1);
    eprintln!(
        "time limit: {}; memory limit: {}",
        shown("timeout"),
        shown("memory")
    );
    assert!(
        v["memory"]["error"] == "53200"
            && v["memory"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("Resources exhausted")),
        "{}",
        shown("memory")
    );
    assert_eq!(v["after_memory"], json!(na));
    // The same statements over HTTP (`POST /api/v1/sql`), streamed as JSON and CSV; a
    // statement past its memory limit before its first row is a proper 400.
    let http_sql = |sql: &str, format: &str| {
        c.post(format!("{}/api/v1/sql", server.url))
            .bearer_auth(&a.read_key)
            .json(&json!({"site_id": a.tracking_id, "sql": sql, "format": format}))
            .send()
    };
    let by_page_sql = "SELECT event_page, count(*) AS n FROM events WHERE pageview GROUP BY event_page ORDER BY event_page";
    let r = http_sql(by_page_sql, "json").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["rows"], json!([["/", 6], ["/pricing", 3]]), "{j}");
    assert_eq!(j["columns"][1]["name"], "n");
    assert_eq!(j["truncated"], false);
    let r = http_sql(by_page_sql, "csv").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "event_page,n\r\n/,6\r\n/pricing,3\r\n"
    );
    let r = http_sql(
        "SELECT x FROM generate_series(1, 4000000) AS t(x) ORDER BY x % 1000, x DESC",
        "json",
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let j: Value = r.json().await.unwrap();
    assert!(j.to_string().contains("memory limit"), "{j}");

    // The server still collects and answers while and after all this.
    let more = post_events(&c, &server.url, &a.write_key, &json!([{"tracking_id": a.tracking_id, "name": "pageview", "client_id": "late", "url": "https://a.example/late"}])).await;
    assert_eq!(more, 1);
}
