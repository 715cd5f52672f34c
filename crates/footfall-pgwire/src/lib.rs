//! The PostgreSQL wire protocol over one property's raw events (docs/SQL.md).
//!
//! psql, psycopg, Grafana, Metabase and the like connect with the property's tracking id
//! as the database and one of its read keys as the password (the user name is not
//! checked). A connection then sees what `POST /api/v1/sql` sees, over the property's
//! whole history: the `events` table and the `visits` view, plus `information_schema`
//! and a `pg_catalog` that describe only those, so that tools can list the tables.
//!
//! What keeps a connection to its property and its limits:
//! - its session is built at login for that property alone: the only catalog is the
//!   property's, and no URL or file tables can be named;
//! - [`guard::Guard`] refuses, before any planning, every statement that is not a query,
//!   a `SHOW`, a PostgreSQL session setting or a transaction statement: no DDL, DML,
//!   `COPY`, `EXPLAIN ANALYZE` of writes, cursors, or settings of the engine itself
//!   (`datafusion.*`, which include its memory limit);
//! - the session's memory pool is `memory_bytes`, and a statement's rows stop with
//!   SQLSTATE 57014 at its time limit (the smaller of the server's and the client's
//!   `statement_timeout`);
//! - every connection runs on the SQL runtime's one thread
//!   ([`footfall_columnar::sql::statements_runtime`]), never on the threads that collect
//!   events and answer dashboards.
//!
//! The protocol itself, the type mapping and `pg_catalog` come from datafusion-postgres
//! and pgwire: they are made for putting DataFusion behind the wire protocol, and their
//! maintainers test them against the tools named above.

mod guard;

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use footfall_columnar::ColumnarEngine;
use futures::{Sink, Stream};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, METADATA_DATABASE, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::Parse;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls;

/// Who may open a connection: the seam to the metadata store.
pub trait WireAuth: Send + Sync + 'static {
    /// Ok when `password` is a read key of the property whose tracking id is `database`;
    /// otherwise the reason, which the client is told. Must not tell an unknown
    /// property from a wrong key for it.
    fn authorise(&self, database: &str, password: &str) -> Result<(), String>;
}

/// The listener's settings.
#[derive(Debug, Clone)]
pub struct WireOptions {
    /// Longest run of one statement.
    pub timeout: Duration,
    /// Memory pool of one connection's operators (sorts, joins, aggregations).
    pub memory_bytes: usize,
    /// Open connections at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// PEM certificate chain and private key: TLS is offered when both are set.
    pub tls: Option<(String, String)>,
}

/// Binds `addr` and serves connections on the SQL runtime; answers the bound address.
pub fn spawn(
    addr: &str,
    engine: Arc<ColumnarEngine>,
    auth: Arc<dyn WireAuth>,
    options: WireOptions,
) -> std::io::Result<SocketAddr> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = footfall_columnar::sql::statements_runtime();
    let server = Arc::new(Server {
        engine,
        auth,
        options,
        pids: RandomPidSecretKeyGenerator::default(),
        open: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    server
        .open
        .add_permits(server.options.max_connections.max(1));
    rt.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the PostgreSQL listener could not start");
                return;
            }
        };
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a PostgreSQL connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let (server, tls) = (server.clone(), tls.clone());
            tokio::spawn(async move {
                let permit = server.open.clone().try_acquire_owned().ok();
                let conn = Connection(Arc::new(State {
                    server,
                    session: OnceLock::new(),
                    full: permit.is_none(),
                }));
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, conn).await {
                    tracing::debug!(%peer, error = %e, "PostgreSQL connection ended");
                }
                drop(permit);
            });
        }
    });
    Ok(local)
}

fn tls_acceptor(cert: &str, key: &str) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("TLS", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid("TLS certificate", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

struct Server {
    engine: Arc<ColumnarEngine>,
    auth: Arc<dyn WireAuth>,
    options: WireOptions,
    pids: RandomPidSecretKeyGenerator,
    open: Arc<tokio::sync::Semaphore>,
}

/// One client connection: its session exists once it has logged in. Each of pgwire's
/// handlers for the connection holds it.
#[derive(Clone)]
struct Connection(Arc<State>);

struct State {
    server: Arc<Server>,
    session: OnceLock<Arc<DfSessionService>>,
    /// Over `max_connections`: refused at startup.
    full: bool,
}

/// A statement the parser could take exponential time over, refused before the engine
/// parses it ([`footfall_sqlguard::parse_within_budget`]): nested too deep or too much
/// work to parse as PostgreSQL refuses a statement too complex (54001), unpaired
/// brackets or `CASE … END` as a syntax error (42601). The engine reports the
/// statement's other errors itself.
fn check_shape(sql: &str) -> PgWireResult<()> {
    use footfall_sqlguard::Refusal;
    match footfall_sqlguard::parse_within_budget(PostgreSqlDialect {}, sql) {
        Ok(_) => Ok(()),
        Err(Refusal::TooComplex(why)) => Err(error("ERROR", "54001", why)),
        Err(Refusal::Malformed(why)) => Err(error("ERROR", "42601", why)),
    }
}

fn error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.into(),
        code.into(),
        message.into(),
    )))
}

impl Connection {
    /// The logged-in session; before login (which pgwire does not let happen) a
    /// session with no tables at all.
    fn service(&self) -> Arc<DfSessionService> {
        static NOTHING: OnceLock<Arc<DfSessionService>> = OnceLock::new();
        match self.0.session.get() {
            Some(s) => s.clone(),
            None => NOTHING
                .get_or_init(|| Arc::new(DfSessionService::new(Arc::new(SessionContext::new()))))
                .clone(),
        }
    }

    /// The statement time limit: the server's, or the client's `statement_timeout`
    /// when that is shorter.
    fn timeout<C: ClientInfo + ?Sized>(&self, client: &C) -> Duration {
        let ours = self.0.server.options.timeout;
        client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(ours, |ms| ours.min(Duration::from_millis(ms)))
    }

    async fn log_in(&self, database: &str) -> PgWireResult<()> {
        let server = &self.0.server;
        let ctx = server
            .engine
            .connection_context(database, server.options.memory_bytes)
            .await
            .map_err(|e| error("FATAL", "58000", e.to_string()))?;
        setup_pg_catalog(&ctx, database, EmptyContextProvider)
            .map_err(|e| error("FATAL", "58000", e.to_string()))?;
        ctx.register_udf(current_setting());
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(guard::Guard),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let service = DfSessionService::new_with_hooks(Arc::new(ctx), hooks);
        let _ = self.0.session.set(Arc::new(service));
        Ok(())
    }
}

/// `current_setting(name)`, which tools call at connect (Grafana's table list reads
/// `search_path`): the fixed values of this server's sessions, NULL for others.
fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
    let f = |args: &[ColumnarValue]| {
        let names = ColumnarValue::values_to_arrays(args)?;
        let names = datafusion::common::cast::as_string_array(&names[0])?;
        let values: StringArray = names
            .iter()
            .map(|n| match n.map(str::to_ascii_lowercase).as_deref() {
                Some("search_path") => Some("public"),
                Some("server_encoding" | "client_encoding") => Some("UTF8"),
                Some("timezone") => Some("UTC"),
                Some("datestyle") => Some("ISO, MDY"),
                Some("standard_conforming_strings") => Some("on"),
                Some("transaction_isolation") => Some("read committed"),
                Some("max_identifier_length") => Some("63"),
                _ => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(values) as ArrayRef))
    };
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(f),
    )
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone())
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.clone())
    }
}

/// Login: a cleartext password (the read key; over TLS when configured), checked against
/// the property named as the database.
#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.0.full {
                    return Err(error(
                        "FATAL",
                        "53300",
                        format!(
                            "too many connections (at most {} at once)",
                            self.0.server.options.max_connections
                        ),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                // PostgreSQL's rule: no database named means the user's name.
                let database = client
                    .metadata()
                    .get(METADATA_DATABASE)
                    .or_else(|| client.metadata().get(METADATA_USER))
                    .cloned()
                    .unwrap_or_default();
                if let Err(why) = self.0.server.auth.authorise(&database, &pwd.password) {
                    return Err(error("FATAL", "28P01", why));
                }
                self.log_in(&database).await?;
                let (pid, secret) = self.0.server.pids.generate(client);
                client.set_pid_and_secret_key(pid, secret);
                finish_authentication(client, &DefaultServerParameterProvider::default()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        check_shape(query)?;
        let deadline = tokio::time::Instant::now() + self.timeout(client);
        let mut responses = SimpleQueryHandler::do_query(&*self.service(), client, query)
            .await
            .map_err(sqlstate)?;
        for r in &mut responses {
            bound(r, deadline);
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.service().query_parser()
    }

    /// A statement's shape is judged before the engine's parser sees it (see
    /// [`footfall_sqlguard::check_shape`]).
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        check_shape(&message.query)?;
        ExtendedQueryHandler::on_parse(&*self.service(), client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout(client);
        let mut response =
            ExtendedQueryHandler::do_query(&*self.service(), client, portal, max_rows)
                .await
                .map_err(sqlstate)?;
        bound(&mut response, deadline);
        Ok(response)
    }
}

/// The engine's errors reach pgwire as internal ones (XX000); clients and tools act on
/// the class, so name it: out of memory (53200), an unknown table or column (42P01,
/// 42703), anything else about the statement (42000).
fn sqlstate(e: PgWireError) -> PgWireError {
    let PgWireError::ApiError(inner) = &e else {
        return e;
    };
    let text = inner.to_string();
    let code = if text.contains("Resources exhausted") {
        "53200"
    } else if text.contains("table") && text.contains("not found") {
        "42P01"
    } else if text.contains("No field named") || text.contains("Schema error") {
        "42703"
    } else if text.contains("Error during planning") || text.contains("SQL error") {
        "42000"
    } else {
        return e;
    };
    error("ERROR", code, text)
}

/// A query's rows end with SQLSTATE 57014 at `deadline`; dropping the rows' stream
/// stops the engine's work on them.
fn bound(response: &mut Response, deadline: tokio::time::Instant) {
    if let Response::Query(q) = response {
        let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
        q.data_rows = Box::pin(Bounded {
            rows: Some(rows),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        });
    }
}

type Rows = Pin<Box<dyn Stream<Item = PgWireResult<DataRow>> + Send>>;

struct Bounded {
    rows: Option<Rows>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for Bounded {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(rows) = self.rows.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = rows.as_mut().poll_next(cx) {
            return Poll::Ready(item.map(|r| r.map_err(sqlstate)));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.rows = None;
            return Poll::Ready(Some(Err(error(
                "ERROR",
                "57014",
                "canceling statement due to statement timeout (the statement ran past its time limit)",
            ))));
        }
        Poll::Pending
    }
}
