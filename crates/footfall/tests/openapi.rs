//! The OpenAPI document (`/api/openapi.json`) against the running server: schemathesis
//! (PyPI) generates requests for every operation — valid and invalid ones, with the
//! credentials each needs (tests/openapi/schemathesis.toml) — and checks that no answer
//! is a 5xx and that every answer's status, content type, headers and body are the ones
//! the document declares.
//!
//! Needs the test venv's schemathesis (scripts/test.sh installs it); skipped loudly
//! without it, failed under CI.

#![cfg(feature = "columnar")]

mod common;

use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_its_openapi_document_says() {
    let Some(py) = test_python() else { return };
    let st = std::path::Path::new(&py).with_file_name("st");
    if !st.exists() {
        assert!(
            std::env::var("CI").is_err(),
            "schemathesis is not in the test venv under CI: run scripts/test.sh"
        );
        eprintln!("\n*** SKIPPED: schemathesis is not installed (scripts/test.sh) ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let site = create_site(data, "Asia/Kolkata");
    let admin = cli(data, &["key", "create", "--scope", "admin"]);
    let password = "a long enough passphrase";
    let account = create_account_with_user(
        data,
        "Acme",
        &[&site.tracking_id],
        ("ann@a.example", password, "owner"),
    );
    let server = Server::start(
        data,
        &[
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__REFRESH_INTERVAL", "200ms"),
        ],
    );
    let c = reqwest::Client::new();
    // Some data, so that reports have rows to shape.
    let events: Vec<Value> = (0..40)
        .map(|i| {
            json!({"tracking_id": site.tracking_id, "name": if i % 4 == 0 { "Signup" } else { "pageview" },
                   "url": format!("https://shop.example/p{}", i % 5), "client_id": format!("c{}", i % 9),
                   "props": {"plan": "pro"}})
        })
        .collect();
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &json!(events)).await,
        40
    );
    wait_for_events(&c, &server.url, &site, json!("day"), 40).await;
    let login = c
        .post(format!("{}/api/auth/login", server.url))
        .json(&json!({"email": "ann@a.example", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("ff_session=")
        .unwrap()
        .to_string();
    let me: Value = login.json().await.unwrap();
    let csrf = me["csrf_token"].as_str().unwrap().to_string();

    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi/schemathesis.toml"
    );
    let examples = std::env::var("FOOTFALL_TEST_OPENAPI_EXAMPLES").unwrap_or("50".into());
    let segment = base64::engine::general_purpose::STANDARD.encode(format!("{}:", site.write_key));
    let bearer = |k: &str| format!("Authorization: Bearer {k}");
    // Each group: the operations it selects and the headers its credentials take.
    // Logging out would end the session the other dashboard operations use: it runs
    // with the operations that take none.
    let groups: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "collect",
            vec![
                "--include-tag".into(),
                "collect".into(),
                "--exclude-operation-id".into(),
                "segment".into(),
            ],
            vec![bearer(&site.write_key)],
        ),
        (
            "segment",
            vec!["--include-operation-id".into(), "segment".into()],
            vec![format!("Authorization: Basic {segment}")],
        ),
        (
            "query",
            vec!["--include-tag".into(), "query".into()],
            vec![bearer(&site.read_key)],
        ),
        (
            "dashboard",
            vec![
                "--include-tag".into(),
                "dashboard".into(),
                "--exclude-operation-id".into(),
                "logout".into(),
            ],
            vec![
                format!("Cookie: ff_session={cookie}"),
                format!("X-CSRF-Token: {csrf}"),
            ],
        ),
        (
            "admin",
            vec!["--include-tag".into(), "admin".into()],
            vec![bearer(&admin)],
        ),
        (
            "public",
            vec![
                "--include-tag".into(),
                "operations".into(),
                "--include-operation-id".into(),
                "logout".into(),
            ],
            vec![],
        ),
    ];
    let mut tested = 0;
    let mut failed = Vec::new();
    for (name, select, headers) in &groups {
        let started = Instant::now();
        let mut cmd = Command::new(&st);
        cmd.arg("--config-file").arg(config).args([
            "run",
            &format!("{}/api/openapi.json", server.url),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            "--max-examples",
            &examples,
            "--seed",
            "7",
        ]);
        cmd.args(select);
        for h in headers {
            cmd.args(["--header", h]);
        }
        let out = cmd
            .env("FF_SITE", &site.tracking_id)
            .env("FF_ACCOUNT", &account)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("== schemathesis: {name}\n{stdout}");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        let n: usize = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Tested: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        tested += n;
        let cases = stdout
            .lines()
            .skip_while(|l| !l.starts_with("Test cases:"))
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        common::cluster::figure(
            "openapi",
            &format!(
                "schemathesis {name}: {n} operations, {:.0} s, {examples} examples each; {cases}",
                started.elapsed().as_secs_f64()
            ),
        );
        if !out.status.success() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis found failures in {failed:?} (above)"
    );
    // Every operation of the document was tested.
    let doc: Value = c
        .get(format!("{}/api/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(tested, operations, "every operation is in one group, once");
}
