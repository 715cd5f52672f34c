//! A cluster of `scripts/cluster.sh` for a test: started by the test, stopped (and its
//! database dropped) however the test ends, with the nodes' last log lines printed when
//! it failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{create_site_by, Site, BIN};

/// Whether the cluster tests run: `FOOTFALL_TEST_CLUSTER` is set (scripts/test.sh sets
/// it). Without it they say loudly that they are skipped, and fail under `CI=true`.
pub fn enabled(test: &str) -> bool {
    if std::env::var("FOOTFALL_TEST_CLUSTER").is_ok() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: FOOTFALL_TEST_CLUSTER is not set under CI: run the tests through scripts/test.sh");
    }
    eprintln!("\n*** SKIPPED {test}: FOOTFALL_TEST_CLUSTER is not set ***\n");
    false
}

/// Runs `scripts/cluster.sh` for the cluster at `port_base`; panics if it fails.
pub fn script(port_base: u16, args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/cluster.sh"))
        .args(args)
        .env("FOOTFALL_CLUSTER_PORT", port_base.to_string())
        .env("FOOTFALL_LOG", "info")
        .output()
        .expect("run cluster.sh");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Prints a figure a test measured and appends it to `target/test-figures/<test>.txt`,
/// which scripts/test.sh prints after the suite (cargo shows a passing test's output to
/// no one).
pub fn figure(test: &str, line: &str) {
    use std::io::Write;
    println!("{line}");
    let dir = root().join("target/test-figures");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{test}.txt")))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Stops the cluster however the test ends.
pub struct Cluster {
    pub dir: PathBuf,
    pub gateway: String,
    pub port_base: u16,
}

impl Cluster {
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.join("footfall.toml"))
            .args(args)
            .output()
            .expect("run footfall");
        assert!(
            out.status.success(),
            "footfall {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn script(&self, args: &[&str]) -> String {
        script(self.port_base, args)
    }

    pub fn kill9(&self, node: &str) {
        let pid: i32 = std::fs::read_to_string(self.dir.join(format!("pids/{node}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        // Reaped by nobody (cluster.sh started it); wait until it is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn site(&self, name: &str, tz: &str) -> Site {
        create_site_by(|args| self.cli(args), name, tz)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/cluster.sh"))
            .args(["down", self.dir.to_str().unwrap(), "--purge"])
            .env("FOOTFALL_CLUSTER_PORT", self.port_base.to_string())
            .status();
        const NODES: [&str; 8] = [
            "processor-1",
            "processor-2",
            "collector-1",
            "collector-2",
            "archiver-1",
            "query-1",
            "query-2",
            "nginx-error",
        ];
        // How often readers found the broker skipping records and fetched again
        // (footfall_kafka::KafkaLog::read): printed always, for the record.
        for f in NODES {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(format!("logs/{f}.log"))) {
                let n = t.matches("the broker skipped records").count();
                if n > 0 {
                    figure(
                        "cluster-refetches",
                        &format!("{f}: {n} re-fetches after the broker skipped records"),
                    );
                }
            }
        }
        if std::thread::panicking() {
            for f in NODES {
                if let Ok(t) = std::fs::read_to_string(self.dir.join(format!("logs/{f}.log"))) {
                    // Ownership changes and trouble over the whole run, then the end.
                    let story: Vec<&str> = t
                        .lines()
                        .filter(|l| {
                            l.contains("footfall_processor::cluster")
                                || l.contains("WARN")
                                || l.contains("ERROR")
                        })
                        .filter(|l| !l.contains("librdkafka"))
                        .collect();
                    eprintln!("--- {f}: ownership and trouble\n{}", story.join("\n"));
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    eprintln!("--- {f} (last lines, newest first)\n{}", tail.join("\n"));
                }
            }
        }
    }
}
