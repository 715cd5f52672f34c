//! The HTTP/1.1 listener, with a direct path for browser beacons.
//!
//! Beacons — one small `POST /api/v1/events` per page view — are most of Footfall's
//! requests, and hyper with the router cost about as much CPU per beacon as everything
//! else the server does for it (BENCHMARKS.md, "Ingest, beacon"). So this loop parses
//! request heads itself (httparse) and answers beacons of the common shape directly:
//! HTTP/1.1, a `Content-Length` body within the limit, and no `Expect`,
//! `Transfer-Encoding`, `Upgrade` or `Connection` option other than keep-alive.
//!
//! The answer is the router's: the handler is shared ([`crate::ingest_native_body`]) and
//! the headers are the ones the router's CORS layer adds (a test compares both answers).
//! Any other request hands its connection to hyper and the router, with the bytes
//! already read, and the connection stays there.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::Router;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use std::sync::Arc;

use crate::{ApiError, AppState};

/// The one path answered here.
const NATIVE_PATH: &str = "/api/v1/events";
/// Heads longer than this go to hyper, which answers 431 past its own limit.
const MAX_HEAD: usize = 16 * 1024;
/// How long a connection may send nothing while a request head is awaited (idle
/// keep-alive included) or a body is being read; hyper's header read timeout is the
/// same, so both paths close such connections alike.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests with more header lines go to hyper.
const MAX_HEADERS: usize = 48;
/// What the router's CORS layer (see [`crate::app`]) adds to answers of simple requests.
const CORS_HEADERS: &[u8] = b"vary: origin, access-control-request-method, \
access-control-request-headers\r\naccess-control-allow-origin: *\r\n";

/// How long a connection stays open once draining starts, waiting for the peer's next
/// request: a proxy's kept-alive connection is not closed under it (a request it writes
/// as the connection closes would fail, and a proxy does not resend a POST). Proxies
/// should close idle upstream connections sooner (nginx: `keepalive_timeout 2s` in the
/// upstream, deploy/nginx), so that none is left when this runs out.
pub const DRAIN_LINGER: Duration = Duration::from_secs(3);

/// How many connections a node holds open (`server.max_connections`) and how many of
/// them one client address may hold (`server.max_connections_per_client`; 0: no such
/// limit — behind a gateway every connection comes from the gateway's address). A
/// connection over a limit is answered at once — 503 (the node is full) or 429 (this
/// client holds its share), in the API's error shape with `Retry-After` — and closed,
/// so that open connections cannot exhaust the process's descriptors or memory.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max: usize,
    pub per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: 10_000,
            per_client: 0,
        }
    }
}

/// The connections open now, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    by_client: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// One connection's place in [`Open`], given back when the connection ends.
struct Slot {
    open: Arc<std::sync::Mutex<Open>>,
    client: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap();
        o.total -= 1;
        if let std::collections::hash_map::Entry::Occupied(mut e) = o.by_client.entry(self.client) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// A place for a connection from `client`, or the answer that refuses it.
fn admit(
    open: &Arc<std::sync::Mutex<Open>>,
    limits: ConnectionLimits,
    client: std::net::IpAddr,
) -> Result<Slot, ApiError> {
    let mut o = open.lock().unwrap();
    if o.total >= limits.max {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this node holds as many connections as it may; retry, or use another node",
        )
        .retry_in(1));
    }
    let mine = o.by_client.get(&client).copied().unwrap_or(0);
    if limits.per_client > 0 && mine >= limits.per_client {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this client address holds as many connections as it may; reuse them",
        )
        .retry_in(1));
    }
    o.total += 1;
    *o.by_client.entry(client).or_insert(0) += 1;
    Ok(Slot {
        open: open.clone(),
        client,
    })
}

/// Answers a refused connection and closes it. What the client sent meanwhile is read
/// and dropped for a moment first: closing with unread bytes would reset the connection
/// and lose the answer.
async fn refuse(mut stream: TcpStream, e: ApiError) {
    let mut out = Vec::with_capacity(256);
    write_answer(&mut out, Err(e), true);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves `listener` until `signal` completes, then drains: the listener closes (new
/// connections are refused, which proxies retry elsewhere), each open connection
/// answers the requests that still come — each answer says `connection: close` — and
/// one that stays idle for [`DRAIN_LINGER`] is closed. Returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppState>,
    router: Router,
    limits: ConnectionLimits,
    signal: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let open: Arc<std::sync::Mutex<Open>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a receiver; the sender sees them all dropped.
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        // Every answer is one small write the client waits for: it goes out at once
        // rather than when the kernel's coalescing of small writes lets it (as nginx's
        // `tcp_nodelay on`). Failing to set it only costs latency.
        let _ = stream.set_nodelay(true);
        let slot = match admit(&open, limits, peer.ip()) {
            Ok(slot) => slot,
            Err(e) => {
                tracing::debug!(%peer, "connection refused: {}", e.message);
                tokio::spawn(refuse(stream, e));
                continue;
            }
        };
        let conn = Connection {
            _slot: slot,
            app: app.clone(),
            router: router.clone(),
            peer,
            stop: stop_rx.clone(),
            _open: open_rx.clone(),
        };
        tokio::spawn(conn.run(stream));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

struct Connection {
    _slot: Slot,
    app: Arc<AppState>,
    router: Router,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
}

/// What the buffered bytes hold.
enum Head {
    /// Not a whole request head yet.
    Partial,
    /// A beacon: head length, body length and the headers.
    Beacon(usize, usize, HeaderMap),
    /// Anything else, or something hyper should judge.
    Other,
}

impl Connection {
    async fn run(mut self, mut stream: TcpStream) {
        let mut buf: Vec<u8> = Vec::with_capacity(2048);
        let mut out: Vec<u8> = Vec::with_capacity(512);
        let max_body = self.app.rules.limits.max_body_bytes;
        // A node that does not collect has no beacon route: hyper answers 404.
        if self.app.log.is_none() {
            return self.hand_to_hyper(stream, buf).await;
        }
        loop {
            let (head, body, headers) = loop {
                match parse_head(&buf, max_body) {
                    Head::Beacon(h, b, m) => break (h, b, m),
                    Head::Other => return self.hand_to_hyper(stream, buf).await,
                    Head::Partial if buf.len() > MAX_HEAD => {
                        return self.hand_to_hyper(stream, buf).await
                    }
                    Head::Partial => {}
                }
                // Between requests, once draining, the peer has DRAIN_LINGER to send
                // one more; inside a request, it is read and answered first.
                let read = if buf.is_empty() {
                    if *self.stop.borrow() {
                        tokio::time::timeout(DRAIN_LINGER, read_more(&mut stream, &mut buf))
                            .await
                            .unwrap_or(Ok(0))
                    } else {
                        tokio::select! {
                            r = read_within_timeout(&mut stream, &mut buf) => r,
                            _ = self.stop.wait_for(|s| *s) => continue,
                        }
                    }
                } else {
                    read_within_timeout(&mut stream, &mut buf).await
                };
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
            };
            while buf.len() < head + body {
                if !matches!(read_within_timeout(&mut stream, &mut buf).await, Ok(n) if n > 0) {
                    return;
                }
            }
            let answer =
                crate::ingest_native_body(&self.app, self.peer, &headers, &buf[head..head + body])
                    .await;
            buf.drain(..head + body);
            if buf.is_empty() && buf.capacity() > 64 * 1024 {
                // A large batch came through: an idle connection need not keep its room.
                buf = Vec::with_capacity(2048);
            }
            out.clear();
            let closing = *self.stop.borrow();
            write_answer(&mut out, answer, closing);
            if stream.write_all(&out).await.is_err() || closing {
                return;
            }
        }
    }

    /// Serves the rest of the connection with hyper and the router, replaying `read`.
    async fn hand_to_hyper(mut self, stream: TcpStream, read: Vec<u8>) {
        let (router, peer) = (self.router, self.peer);
        let draining = self.stop.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            let draining = draining.clone();
            async move {
                let mut resp = tower::ServiceExt::oneshot(router, req)
                    .await
                    .unwrap_or_else(|e| match e {});
                if *draining.borrow() {
                    // hyper closes the connection after this answer.
                    resp.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let io = hyper_util::rt::TokioIo::new(Replay {
            read,
            at: 0,
            stream,
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let done = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = self.stop.wait_for(|s| *s) => None,
        };
        let r = match done {
            Some(r) => r,
            // Draining: requests still coming are answered (and close the connection);
            // an idle connection is closed after DRAIN_LINGER.
            None => match tokio::time::timeout(DRAIN_LINGER, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            },
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
        }
    }
}

/// Reads more; a peer that sends nothing for [`READ_TIMEOUT`] loses its connection
/// (as `Ok(0)`).
async fn read_within_timeout(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    tokio::time::timeout(READ_TIMEOUT, read_more(stream, buf))
        .await
        .unwrap_or(Ok(0))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// Classifies the request at the start of `buf`.
fn parse_head(buf: &[u8], max_body: usize) -> Head {
    if buf.is_empty() {
        return Head::Partial;
    }
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut lines);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if req.version != Some(1) || req.method != Some("POST") || path != NATIVE_PATH {
        return Head::Other;
    }
    let mut length = None;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (length, n) {
                (None, Some(n)) => length = Some(n),
                _ => return Head::Other,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection")
                && !h.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return Head::Other;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return Head::Other,
        }
    }
    match length {
        Some(n) if n <= max_body => Head::Beacon(head, n, headers),
        _ => Head::Other,
    }
}

/// The HTTP/1.1 answer, as the router would send it.
fn write_answer(
    out: &mut Vec<u8>,
    answer: Result<(StatusCode, serde_json::Value), ApiError>,
    close: bool,
) {
    let (status, retry_after, body) = match answer {
        Ok((s, b)) => (s, None, b),
        Err(e) => e.into_parts(),
    };
    let body = serde_json::to_vec(&body).expect("a JSON value serialises");
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    out.extend_from_slice(CORS_HEADERS);
    if let Some(s) = retry_after {
        let _ = write!(out, "retry-after: {s}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(out, "content-length: {}\r\ndate: ", body.len());
    date::write(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
}

mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        /// The `Date` value of the current second, per thread.
        static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(c.1.as_bytes());
        });
    }
}

/// The connection's stream with bytes already taken from it put back in front.
struct Replay {
    read: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
