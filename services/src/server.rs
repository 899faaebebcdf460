//! The HTTPS (mTLS) listener with per-request ACL enforcement, the plain-HTTP health listener, and
//! the scaffolding every service shares (material polling, graceful shutdown).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

use crate::config::{RuntimePaths, ServiceConfig};
use crate::metrics::Metrics;
use crate::reload::{MaterialPaths, MaterialStore};
use crate::util::TraceContext;

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one listener serves at once. Over the cap the listener stops accepting until one
/// ends: new connections wait in the kernel's backlog (and time out there) instead of each taking
/// a task, buffers and a TLS session of a 128 MiB pod.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a connection has to send a request's headers (hyper's slow-loris guard, explicit here).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Other(String),
}

/// The verified SPIFFE ID of the peer of the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<String>);

/// Hex SHA-256 of the peer's end-entity certificate, on TLS connections that presented one (the
/// ingest port's rate limit keys on it).
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub String);

/// The request's trace context (from `traceparent` or new).
#[derive(Debug, Clone)]
pub struct RequestTrace(pub TraceContext);

/// Route template that handled a request (copied into the response for the metrics layer).
#[derive(Debug, Clone)]
struct RouteTag(String);

/// `500` for a failure of the service itself (its store), logged with the error.
pub fn internal_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

/// `{"error": msg}` with a status.
pub fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A service-specific condition for `/readyz`, on top of the mounted material (for example
/// smoc-service's JWT key set).
pub trait ReadinessCheck: Send + Sync {
    /// `Ok(())` when ready, else the reason shown in the `503` body.
    fn readiness(&self) -> Result<(), String>;
}

/// Everything a running service shares.
#[derive(Clone)]
pub struct ServiceContext {
    pub name: String,
    pub paths: RuntimePaths,
    pub config: ServiceConfig,
    pub metrics: Arc<Metrics>,
    pub material: Arc<MaterialStore>,
    pub shutdown: watch::Receiver<bool>,
    pub poll_interval: Duration,
    pub drain_deadline: Duration,
    /// Extra `/readyz` conditions; add them before [`start_common`] builds the health router.
    pub readiness_checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl ServiceContext {
    pub fn new(
        name: &str,
        paths: RuntimePaths,
        config: ServiceConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(name));
        let material =
            MaterialStore::new(name, MaterialPaths::from_runtime(&paths), metrics.clone());
        Self {
            name: name.to_string(),
            paths,
            config,
            metrics,
            material,
            shutdown,
            poll_interval: crate::reload::POLL_INTERVAL,
            drain_deadline: DRAIN_DEADLINE,
            readiness_checks: Vec::new(),
        }
    }
}

/// Addresses of a started service and its completion handle.
pub struct Running {
    pub https_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub ingest_addr: Option<SocketAddr>,
    pub tasks: JoinSet<Result<(), ServerError>>,
}

impl Running {
    /// Waits until every task ended (after shutdown) and returns the first error.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        let mut first = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            let r = r
                .map_err(|e| ServerError::Other(format!("task failed: {e}")))
                .and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Flips the returned receiver to `true` on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = term.recv() => {},
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    rx
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteTag(r));
    }
    resp
}

/// Outermost layer: trace context, request span, metrics, access log.
async fn trace_and_count(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let tc = TraceContext::from_header_or_new(header);
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone())
        .unwrap_or_default();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", trace_id = %tc.trace_id, method = %method, path = %path, peer = %peer);
    let traceparent = tc.header_value();
    req.extensions_mut().insert(RequestTrace(tc));
    let started = Instant::now();
    async move {
        let mut resp = next.run(req).await;
        let route = resp
            .extensions()
            .get::<RouteTag>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| "unmatched".to_string());
        let status = resp.status().as_u16().to_string();
        metrics
            .requests
            .get_or_create(&Metrics::labels(&[
                ("route", &route),
                ("method", Metrics::method_label(&method)),
                ("status", &status),
            ]))
            .inc();
        tracing::info!(status = %status, route = %route, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            resp.headers_mut().insert("traceparent", v);
        }
        resp
    }
    .instrument(span)
    .await
}

/// What the ACL layer does with a request that came on a connection without a verified peer
/// identity. Every listener the services start requires a client certificate, so in a deployment
/// such a request cannot happen and [`AnonymousCallers::Refuse`] is what [`secure_app`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousCallers {
    /// No identity, no access (`403`). What every service uses.
    Refuse,
    /// **Benchmarks and tests only** (`mpm-bench tls` serves device-hub over server-only TLS to
    /// measure what mTLS costs): a request without a peer identity passes the ACL layer. Nothing in
    /// `config.json` or the environment selects this; only code calling [`secure_app_with`] can.
    /// A caller that *does* present an identity is still checked against allowed-peers.json.
    Permit,
}

/// The ACL decision for one request (pure, see [`AnonymousCallers`]).
pub fn acl_decision(
    acl: &crate::acl::Acl,
    anonymous: AnonymousCallers,
    peer: Option<&str>,
    method: &str,
    path: &str,
) -> crate::acl::Decision {
    match (peer, anonymous) {
        (None, AnonymousCallers::Permit) => crate::acl::Decision::Allow,
        _ => acl.check(peer, method, path),
    }
}

/// Enforces allowed-peers.json per request.
async fn enforce_acl(
    State((store, anonymous)): State<(Arc<MaterialStore>, AnonymousCallers)>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let decision = acl_decision(&store.acl(), anonymous, peer.as_deref(), &method, &path);
    if decision.is_allowed() {
        return next.run(req).await;
    }
    let who = peer.unwrap_or_else(|| "<no spiffe id>".to_string());
    let msg = decision.message(&who, &method, &path);
    tracing::warn!(peer = %who, method = %method, path = %path, reason = ?decision, "request denied by ACL");
    store
        .metrics()
        .acl_denials
        .get_or_create(&Metrics::labels(&[("peer", &who)]))
        .inc();
    json_error(StatusCode::FORBIDDEN, msg)
}

fn tagged(router: Router) -> Router {
    if router.has_routes() {
        router.route_layer(middleware::from_fn(tag_route))
    } else {
        router
    }
}

/// Wraps a service router with route tagging, ACL enforcement and tracing/metrics.
pub fn secure_app(router: Router, ctx: &ServiceContext) -> Router {
    secure_app_with(router, ctx, AnonymousCallers::Refuse)
}

/// [`secure_app`] with an explicit treatment of callers without identity. **For benchmarks and
/// tests**: services use [`secure_app`] (see [`AnonymousCallers::Permit`]).
pub fn secure_app_with(
    router: Router,
    ctx: &ServiceContext,
    anonymous: AnonymousCallers,
) -> Router {
    tagged(router)
        .layer(middleware::from_fn_with_state(
            (ctx.material.clone(), anonymous),
            enforce_acl,
        ))
        .layer(middleware::from_fn_with_state(
            ctx.metrics.clone(),
            trace_and_count,
        ))
}

/// Wraps a plain router (ingest) with tracing/metrics only.
pub fn traced_app(router: Router, ctx: &ServiceContext) -> Router {
    tagged(router).layer(middleware::from_fn_with_state(
        ctx.metrics.clone(),
        trace_and_count,
    ))
}

/// How an accepted TCP connection becomes an HTTP one.
#[derive(Clone)]
enum Transport {
    /// Health and ingest ports: no TLS, no peer identity.
    Plain,
    /// The service port: an mTLS handshake, whose verified SPIFFE ID goes with every request.
    Mtls {
        acceptor: tokio_rustls::TlsAcceptor,
        metrics: Arc<Metrics>,
    },
}

/// Serves `app` over mTLS until `shutdown` flips, then drains in-flight connections for at most
/// `drain`.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<(), ServerError> {
    let transport = Transport::Mtls {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        metrics,
    };
    serve(listener, transport, app, shutdown, drain, MAX_CONNECTIONS).await
}

/// Serves a plain-HTTP router until `shutdown` flips, then drains in-flight connections for at
/// most `drain`.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<(), ServerError> {
    serve(
        listener,
        Transport::Plain,
        app,
        shutdown,
        drain,
        MAX_CONNECTIONS,
    )
    .await
}

/// The accept loop both listeners share. Every connection is a task of one `JoinSet`, and this
/// returns only after each of them has ended and dropped its copy of `app`: a service's state
/// (its database, say) is released once [`Running::wait`] returns, so the same process can open
/// it again. (`axum::serve` does not promise that: its connection tasks drop the router after
/// reporting themselves closed.)
async fn serve(
    listener: TcpListener,
    transport: Transport,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    max_connections: usize,
) -> Result<(), ServerError> {
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {},
            // At the cap, only a connection ending (above) lets the loop accept again.
            accepted = listener.accept(), if conns.len() < max_connections => {
                let (tcp, remote) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                conns.spawn(serve_connection(
                    tcp,
                    remote,
                    transport.clone(),
                    app.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "drain deadline reached; aborting connections"
        );
        // Abort, and wait until the aborted tasks are dropped (not merely told to stop).
        conns.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    transport: Transport,
    app: Router,
    shutdown: watch::Receiver<bool>,
) {
    match transport {
        Transport::Plain => serve_http1(TokioIo::new(tcp), None, app, remote, shutdown).await,
        Transport::Mtls { acceptor, metrics } => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.handshake_failures.inc();
                    tracing::warn!(remote = %remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake_failures.inc();
                    tracing::warn!(remote = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let chain = stream.get_ref().1.peer_certificates();
            let peer = chain.and_then(mpm_spiffe::peer_spiffe_id);
            let certificate = chain
                .and_then(|c| c.first())
                .map(|leaf| PeerCertificate(crate::util::sha256_hex(leaf.as_ref())));
            let identity = PeerIdentity(peer);
            let io = TokioIo::new(stream);
            serve_http1(io, Some((identity, certificate)), app, remote, shutdown).await
        }
    }
}

/// One HTTP/1.1 connection until it ends; on shutdown it finishes the request in flight and
/// closes.
async fn serve_http1<I>(
    io: TokioIo<I>,
    identity: Option<(PeerIdentity, Option<PeerCertificate>)>,
    app: Router,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some((identity, certificate)) = &identity {
            req.extensions_mut().insert(identity.clone());
            if let Some(certificate) = certificate {
                req.extensions_mut().insert(certificate.clone());
            }
        }
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        let app = app.clone();
        async move {
            let resp: Result<Response, Infallible> = app.oneshot(req.map(Body::new)).await;
            resp
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(remote = %remote, error = %e, "connection ended with error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// `/healthz`, `/readyz`, `/metrics`, `/status` (contract: Health port).
pub fn health_router(ctx: &ServiceContext) -> Router {
    let store = ctx.material.clone();
    let metrics = ctx.metrics.clone();
    let checks = ctx.readiness_checks.clone();
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get({
                let store = store.clone();
                move || async move {
                    // Material first: without a certificate nothing else matters.
                    let ready = store
                        .readiness()
                        .and_then(|()| checks.iter().try_for_each(|c| c.readiness()));
                    match ready {
                        Ok(()) => (StatusCode::OK, "ready".to_string()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        )
        .route("/status", get(move || async move { Json(store.status()) }))
}

/// Binds the HTTPS and health listeners, starts the material poller, and spawns both servers.
pub async fn start_common(ctx: &ServiceContext, app: Router) -> Result<Running, ServerError> {
    let https = bind(ctx.paths.https_addr).await?;
    let health = bind(ctx.paths.health_addr).await?;
    let https_addr = https.local_addr().map_err(|source| ServerError::Bind {
        addr: ctx.paths.https_addr,
        source,
    })?;
    let health_addr = health.local_addr().map_err(|source| ServerError::Bind {
        addr: ctx.paths.health_addr,
        source,
    })?;
    let tls = crate::tls::server_config(ctx.material.clone())?;
    let mut tasks = JoinSet::new();
    let poller = ctx.material.clone();
    let (interval, sd) = (ctx.poll_interval, ctx.shutdown.clone());
    tasks.spawn(async move {
        poller.watch(interval, sd).await;
        Ok(())
    });
    tasks.spawn(serve_https(
        https,
        tls,
        secure_app(app, ctx),
        ctx.metrics.clone(),
        ctx.shutdown.clone(),
        ctx.drain_deadline,
    ));
    tasks.spawn(serve_plain(
        health,
        health_router(ctx),
        ctx.shutdown.clone(),
        ctx.drain_deadline,
    ));
    tracing::info!(service = %ctx.name, https = %https_addr, health = %health_addr, "listening");
    Ok(Running {
        https_addr,
        health_addr,
        ingest_addr: None,
        tasks,
    })
}

/// The peer identity of a request (set by the HTTPS listener).
pub fn peer_of(req_ext: &axum::http::Extensions) -> Option<String> {
    req_ext.get::<PeerIdentity>().and_then(|p| p.0.clone())
}

/// Shared binary entry: logs, env paths, config, run until signalled.
pub async fn main_entry<F, Fut>(name: &str, start: F) -> Result<(), ServerError>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: std::future::Future<Output = Result<Running, ServerError>>,
{
    crate::telemetry::init(name);
    let paths = RuntimePaths::from_env()?;
    let config = ServiceConfig::load(&paths.config_file)?;
    if config.service != name {
        tracing::warn!(configured = %config.service, binary = name, "config.json names another service");
    }
    let shutdown = shutdown_on_signals();
    let ctx = ServiceContext::new(name, paths, config, shutdown);
    let running = start(ctx).await?;
    let r = running.wait().await;
    tracing::info!(service = name, "stopped");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Acl, Decision};

    const HUB: &str = "spiffe://cluster.local/ns/park/sa/demo-device-hub";

    fn acl() -> Acl {
        let doc = format!(
            r#"{{"version": 1, "peers": [{{"spiffeId": "{HUB}", "methods": ["GET"], "pathPrefixes": ["/v1/"]}}]}}"#
        );
        Acl::parse(doc.as_bytes()).expect("valid acl")
    }

    /// Attack: a client opening connections without end (idle, or slow) took a task and buffers
    /// each, without limit. Over the cap the listener now waits until a connection ends.
    #[tokio::test]
    async fn a_listener_serves_at_most_its_cap_of_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        let app = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve(
            listener,
            Transport::Plain,
            app,
            rx,
            Duration::from_secs(1),
            2,
        ));
        let idle1 = tokio::net::TcpStream::connect(addr).await.expect("idle 1");
        let _idle2 = tokio::net::TcpStream::connect(addr).await.expect("idle 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("backlog");
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let early =
            tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut buf)).await;
        assert!(early.is_err(), "served over the cap: {buf:?}");
        drop(idle1);
        tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf))
            .await
            .expect("served once a connection ended")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        let _ = tx.send(true);
        let _ = server.await;
    }

    /// Attack: every request with a new method name created a metric series, without limit.
    #[tokio::test]
    async fn random_methods_create_a_bounded_number_of_series() {
        use rand::Rng;
        let metrics = Arc::new(Metrics::new("t"));
        let app = Router::new().route("/v1/x", get(|| async { "ok" })).layer(
            middleware::from_fn_with_state(metrics.clone(), trace_and_count),
        );
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let method: String = (0..8)
                .map(|_| char::from(rng.random_range(b'A'..=b'Z')))
                .collect();
            let req = Request::builder()
                .method(method.as_str())
                .uri("/v1/x")
                .body(Body::empty())
                .expect("request");
            let _ = app.clone().oneshot(req).await;
        }
        let series = metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("mpm_http_requests_total{"))
            .count();
        assert!(series <= 2, "{series} series");
        assert!(metrics.encode().contains("method=\"OTHER\""));
    }

    #[test]
    fn anonymous_callers_are_refused_unless_a_benchmark_permits_them() {
        let acl = acl();
        assert_eq!(
            acl_decision(&acl, AnonymousCallers::Refuse, None, "GET", "/v1/x"),
            Decision::UnknownPeer
        );
        assert_eq!(
            acl_decision(&acl, AnonymousCallers::Permit, None, "GET", "/v1/x"),
            Decision::Allow
        );
    }

    #[test]
    fn permitting_anonymous_callers_still_checks_presented_identities() {
        let acl = acl();
        for anonymous in [AnonymousCallers::Refuse, AnonymousCallers::Permit] {
            assert_eq!(
                acl_decision(&acl, anonymous, Some(HUB), "GET", "/v1/x"),
                Decision::Allow
            );
            assert_eq!(
                acl_decision(&acl, anonymous, Some(HUB), "DELETE", "/v1/x"),
                Decision::MethodNotAllowed
            );
            assert_eq!(
                acl_decision(&acl, anonymous, Some("spiffe://x/y"), "GET", "/v1/x"),
                Decision::UnknownPeer
            );
        }
    }
}
