//! Runs the real `footfall` binary as a child process for end-to-end tests.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use footfall_testkit::OEvent;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_footfall");

/// Runs a CLI command against a data directory and returns its stdout.
pub fn cli(data_dir: &Path, args: &[&str]) -> String {
    cli_with(data_dir, &[], args)
}

/// [`cli`] with environment variables (e.g. `FOOTFALL_META__URL` for a shared database).
pub fn cli_with(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run footfall");
    assert!(
        out.status.success(),
        "footfall {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(Debug, Clone)]
pub struct Site {
    pub tracking_id: String,
    pub read_key: String,
    pub write_key: String,
}

pub fn create_site(data_dir: &Path, tz: &str) -> Site {
    create_site_with(data_dir, tz, &[])
}

pub fn create_site_with(data_dir: &Path, tz: &str, env: &[(&str, &str)]) -> Site {
    create_site_by(|args| cli_with(data_dir, env, args), "Test shop", tz)
}

/// A property with a read and a write key, made by `run` (a CLI invocation that
/// returns stdout: against a data directory, or `--config` of a cluster).
pub fn create_site_by(run: impl Fn(&[&str]) -> String, name: &str, tz: &str) -> Site {
    let p: Value = serde_json::from_str(&run(&[
        "property",
        "create",
        "--name",
        name,
        "--timezone",
        tz,
        "--json",
    ]))
    .unwrap();
    let tid = p["tracking_id"].as_str().unwrap().to_string();
    let key = |scope: &str| -> String {
        let v: Value = serde_json::from_str(&run(&[
            "key",
            "create",
            "--property",
            &tid,
            "--scope",
            scope,
            "--json",
        ]))
        .unwrap();
        v["key"].as_str().unwrap().to_string()
    };
    Site {
        read_key: key("read"),
        write_key: key("write"),
        tracking_id: tid,
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with(data_dir, &[], env)
    }

    /// [`Server::start`] with more `serve` arguments (e.g. `--role query`).
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        cmd.env("FOOTFALL_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn footfall serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("footfall listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let st = self.child.wait().unwrap();
        (st, t.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn to_json(site: &Site, e: &OEvent) -> Value {
    let mut v = json!({
        "tracking_id": site.tracking_id,
        "name": e.name,
        "timestamp": e.ts,
        "client_id": e.visitor,
        "interactive": e.interactive,
    });
    if let Some(u) = &e.url {
        v["url"] = json!(u);
    }
    if let Some(r) = &e.referrer {
        v["referrer"] = json!(r);
    }
    v
}

pub async fn query(client: &reqwest::Client, url: &str, site: &Site, q: Value) -> Value {
    let r = client
        .post(format!("{url}/api/v2/query"))
        .bearer_auth(&site.read_key)
        .json(&q)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status.as_u16(), 200, "query {q} failed: {v}");
    v
}

/// Polls until the total event count over `date_range` reaches `expected`.
pub async fn wait_for_events(
    client: &reqwest::Client,
    url: &str,
    site: &Site,
    date_range: Value,
    expected: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = query(
            client,
            url,
            site,
            json!({"site_id": site.tracking_id, "metrics": ["events"], "date_range": date_range}),
        )
        .await;
        let n = v["results"][0]["metrics"][0].as_u64().unwrap_or(0);
        if n >= expected {
            assert_eq!(n, expected, "more events than were sent");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {expected} events visible after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Compares every supported report with the oracle, through the HTTP API.
pub async fn check_against_oracle(
    client: &reqwest::Client,
    url: &str,
    site: &Site,
    r: &footfall_testkit::Report,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let mut run = |q: Value| handle.block_on(query(client, url, site, q));
        footfall_testkit::check::check_report(&mut run, &site.tracking_id, r, from, to);
    });
}

/// Posts events with a write key; asserts 202 and returns the number accepted.
pub async fn post_events(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> u64 {
    let r = client
        .post(format!("{url}/api/v1/events"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.json::<Value>().await.unwrap()["accepted"]
        .as_u64()
        .unwrap()
}

/// A one-dimension, one-metric result as a map.
pub fn counts_by_dimension(v: &Value) -> std::collections::BTreeMap<String, u64> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap().to_string(),
                r["metrics"][0].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The Python interpreter with the test packages (scripts/test.sh installs them and sets
/// FOOTFALL_TEST_PYTHON). Absent: the caller skips, loudly — except under CI, where a
/// missing interpreter is a failure.
pub fn test_python() -> Option<String> {
    match std::env::var("FOOTFALL_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").is_ok() {
                panic!("FOOTFALL_TEST_PYTHON is not set under CI: run the suite through scripts/test.sh");
            }
            eprintln!(
                "\n*** SKIPPED: FOOTFALL_TEST_PYTHON is not set (scripts/test.sh sets it) ***\n"
            );
            None
        }
    }
}

/// `GET /api/v1/stats/filtered` for `site` over `date_range` (`day`, `FROM,TO`, …).
pub async fn filtered(client: &reqwest::Client, url: &str, site: &Site, date_range: &str) -> Value {
    client
        .get(format!(
            "{url}/api/v1/stats/filtered?site_id={}&date_range={date_range}",
            site.tracking_id
        ))
        .bearer_auth(&site.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Expected one-dimension counts, in the shape of [`counts_by_dimension`].
pub fn map_of(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Runs a command to completion and asserts it succeeded (its stderr is the message).
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `d`, recursively.
pub fn files_under(d: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out)
        } else {
            out.push(p)
        }
    }
}

/// The files under `dir` holding `needle`.
pub fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Every record of the archive's (deflate-compressed) Avro files, as Python's fastavro
/// reads them, one `repr` per line: what a byte scan of the files cannot see.
pub fn archive_records(py: &str, dir: &Path, out: &Path) {
    let mut files = Vec::new();
    files_under(&dir.join("archive"), &mut files);
    files.retain(|f| f.extension().is_some_and(|x| x == "avro"));
    assert!(!files.is_empty(), "no archive files");
    let script = r#"
import sys, fastavro
with open(sys.argv[1], "w") as out:
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            for r in fastavro.reader(f):
                out.write(repr(r) + "\n")
"#;
    run_ok(
        std::process::Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(out)
            .args(&files),
    );
}

/// An account owning `properties`, with one user of `role` who logs in with `email` and
/// `password`; answers the account's id.
pub fn create_account_with_user(
    data_dir: &Path,
    name: &str,
    properties: &[&str],
    (email, password, role): (&str, &str, &str),
) -> String {
    let mut args = vec!["account", "create", "--name", name];
    for p in properties {
        args.extend_from_slice(&["--property", p]);
    }
    let account = cli(data_dir, &args);
    cli_with(
        data_dir,
        &[("FOOTFALL_PASSWORD", password)],
        &[
            "user",
            "create",
            "--email",
            email,
            "--account",
            &account,
            "--role",
            role,
        ],
    );
    account
}
