//! A broker of a test's own, for tests that kill it: tansu, the binary named by
//! `FOOTFALL_TEST_TANSU` (`scripts/kafka.sh install` prints it; scripts/test.sh sets it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable that names the tansu binary.
pub const TANSU_VAR: &str = "FOOTFALL_TEST_TANSU";

/// A tansu broker on a free loopback port, in memory; killed when dropped.
pub struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts one, or returns `None` (said loudly) when no tansu binary is configured.
    /// Under CI (`CI=true`) a missing binary is a failure, not a skip.
    pub fn start(test: &str) -> Option<Broker> {
        let Ok(tansu) = std::env::var(TANSU_VAR) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{TANSU_VAR} is not set under CI: run the tests through scripts/test.sh");
            }
            eprintln!(
                "\n*** SKIPPED {test}: {TANSU_VAR} is not set (scripts/kafka.sh install) ***\n"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker { child, port })
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (kill -9) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
