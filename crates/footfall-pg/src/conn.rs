//! Connections owned by worker threads.
//!
//! Footfall's store traits are synchronous and are called from the processor's thread,
//! from blocking tasks and from the server's cache. The `postgres` client drives its own
//! runtime and must not block inside the server's, so each connection lives on a thread
//! of its own and callers hand it a closure and wait for the answer: any thread may call,
//! and a lost connection is re-opened by the worker on the next call.

use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, Config, NoTls};

use crate::Error;

type Job = Box<dyn FnOnce(&mut Option<Client>, &Config) + Send>;

/// A fixed set of connections, each on its own thread, sharing one queue of calls.
pub struct Pool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// How long a connection attempt may take before the call fails (then 503 upstream).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Pool {
    /// `size` connections to `url` (a `postgres://` URL or a key=value string), opened
    /// at once (in the background) and re-opened after a failure; a call while the database is down
    /// fails within [`CONNECT_TIMEOUT`].
    pub fn new(url: &str, size: usize, name: &str) -> Result<Self, Error> {
        let mut config = Config::from_str(url).map_err(|e| Error::Config(e.to_string()))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name(&format!("footfall-{name}"));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..size.max(1) {
            let rx = rx.clone();
            let config = config.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pg-{name}-{i}"))
                    .spawn(move || {
                        // Connected at once, so that a node's first queries do not pay
                        // for it; a database that is down is tried again on first use.
                        let mut client: Option<Client> = config.connect(NoTls).ok();
                        loop {
                            let job = match rx.lock().unwrap().recv() {
                                Ok(j) => j,
                                Err(_) => return,
                            };
                            if client.as_ref().is_some_and(|c| c.is_closed()) {
                                client = None;
                            }
                            job(&mut client, &config);
                        }
                    })
                    .map_err(|e| Error::Config(e.to_string()))?,
            );
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    /// Runs `f` on a connection and returns its result. A connection found closed (the
    /// database restarted, a network cut) is opened again and `f` run once more on the
    /// new one, so the first call after an outage does not fail for a dead socket. A
    /// statement that reached the database is not retried for any other error.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client, config| {
            let r = (|| {
                for attempt in 0..2 {
                    if client.is_none() {
                        *client = Some(config.connect(NoTls).map_err(Error::unavailable)?);
                    }
                    let c = client.as_mut().expect("connected above");
                    match f(c) {
                        Ok(v) => return Ok(v),
                        Err(e) if c.is_closed() => {
                            *client = None;
                            if attempt == 1 {
                                return Err(Error::from(e));
                            }
                        }
                        Err(e) => return Err(Error::from(e)),
                    }
                }
                unreachable!("the second attempt returns")
            })();
            let _ = reply.send(r);
        });
        let tx = self.tx.lock().unwrap().clone().ok_or(Error::Closed)?;
        tx.send(job).map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.lock().unwrap().take();
        for w in self.workers.lock().unwrap().drain(..) {
            let _ = w.join();
        }
    }
}
