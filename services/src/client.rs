//! Outgoing mTLS calls to peer services: one HTTP/1.1 connection per attempt, timeouts, retries with
//! exponential backoff and jitter, a per-peer circuit breaker, and `traceparent` propagation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::PeerConfig;
use crate::metrics::Metrics;
use crate::reload::MaterialStore;
use crate::util::TraceContext;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid peer URL {0}")]
    Url(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS to {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("HTTP to {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error("timeout calling {0}")]
    Timeout(String),
    #[error("circuit open for {0}; not calling")]
    CircuitOpen(String),
    #[error("{peer} answered {status}: {body}")]
    Status {
        peer: String,
        status: u16,
        body: String,
    },
    #[error("{addr} answered a body that exceeds {limit} bytes")]
    BodyTooLarge { addr: String, limit: usize },
    #[error(transparent)]
    TlsConfig(#[from] crate::tls::TlsError),
}

/// The most bytes of a peer's answer a call reads: beyond it the call fails
/// ([`ClientError::BodyTooLarge`]) instead of buffering whatever the peer sends.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

impl ClientError {
    /// Worth retrying (transport errors, 5xx, 408, 429)?
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            ClientError::Url(_)
            | ClientError::TlsConfig(_)
            | ClientError::CircuitOpen(_)
            | ClientError::BodyTooLarge { .. } => false,
            _ => true,
        }
    }
}

/// Answers that refuse the request itself (`400`, `413`, `422`): sending it again gets the same
/// answer, so a queue drops or parks it. Anything else (`401`/`403` from an ACL that may still
/// change, `404` during a rollout, `5xx`) is worth another round.
pub fn refused_for_good(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// Retry and breaker knobs.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// A successful (2xx..4xx that is not transient) answer.
#[derive(Debug, Clone)]
pub struct PeerResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    half_open_trial: bool,
}

/// Breaker states, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

struct Target {
    host: String,
    port: u16,
    base_path: String,
    tls: Arc<rustls::ClientConfig>,
}

/// mTLS client for the hub's peers.
pub struct MtlsClient {
    material: Arc<MaterialStore>,
    metrics: Arc<Metrics>,
    policy: ClientPolicy,
    targets: Mutex<HashMap<String, Arc<Target>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

fn parse_url(url: &str) -> Result<(String, u16, String), ClientError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Url(format!("{url}: must start with https://")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let end = stripped
            .find(']')
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        let host = &stripped[..end];
        let port = stripped[end + 1..]
            .strip_prefix(':')
            .map(|p| p.parse::<u16>())
            .transpose()
            .map_err(|_| ClientError::Url(url.to_string()))?
            .unwrap_or(443);
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| ClientError::Url(url.to_string()))?,
            ),
            None => (authority.to_string(), 443),
        }
    };
    if host.is_empty() {
        return Err(ClientError::Url(url.to_string()));
    }
    Ok((host, port, path))
}

impl MtlsClient {
    pub fn new(material: Arc<MaterialStore>, metrics: Arc<Metrics>, policy: ClientPolicy) -> Self {
        Self {
            material,
            metrics,
            policy,
            targets: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn target(&self, peer: &PeerConfig) -> Result<Arc<Target>, ClientError> {
        let key = format!("{}|{}", peer.url, peer.spiffe_id);
        if let Ok(g) = self.targets.lock() {
            if let Some(t) = g.get(&key) {
                return Ok(t.clone());
            }
        }
        let (host, port, base_path) = parse_url(&peer.url)?;
        let tls = crate::tls::client_config(self.material.clone(), &peer.spiffe_id)?;
        let t = Arc::new(Target {
            host,
            port,
            base_path,
            tls,
        });
        if let Ok(mut g) = self.targets.lock() {
            g.insert(key, t.clone());
        }
        Ok(t)
    }

    /// The breaker state of a peer URL.
    pub fn breaker_state(&self, peer: &PeerConfig) -> BreakerState {
        let Ok(g) = self.breakers.lock() else {
            return BreakerState::Closed;
        };
        match g.get(&peer.url) {
            Some(b) => match b.open_until {
                Some(t) if Instant::now() < t => BreakerState::Open,
                Some(_) => BreakerState::HalfOpen,
                None => BreakerState::Closed,
            },
            None => BreakerState::Closed,
        }
    }

    /// May we call? Half-open lets exactly one trial through.
    fn breaker_admit(&self, key: &str) -> bool {
        let Ok(mut g) = self.breakers.lock() else {
            return true;
        };
        let b = g.entry(key.to_string()).or_default();
        match b.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                if b.half_open_trial {
                    false
                } else {
                    b.half_open_trial = true;
                    true
                }
            }
        }
    }

    fn breaker_record(&self, key: &str, ok: bool) {
        let Ok(mut g) = self.breakers.lock() else {
            return;
        };
        let b = g.entry(key.to_string()).or_default();
        if ok {
            *b = Breaker::default();
        } else {
            b.consecutive_failures = b.consecutive_failures.saturating_add(1);
            b.half_open_trial = false;
            if b.consecutive_failures >= self.policy.breaker_threshold {
                if b.open_until.is_none() {
                    tracing::warn!(
                        peer = key,
                        failures = b.consecutive_failures,
                        "circuit opened"
                    );
                }
                b.open_until = Some(Instant::now() + self.policy.breaker_cooldown);
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.policy.max_backoff);
        let jitter = rand::rng().random_range(0.5..1.0);
        exp.mul_f64(jitter)
    }

    /// Calls `peer` with retries. Returns the response for 2xx and non-transient 4xx; errors for
    /// transport failures and transient statuses after the last attempt.
    pub async fn call(
        &self,
        peer_name: &str,
        peer: &PeerConfig,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        trace: &TraceContext,
    ) -> Result<PeerResponse, ClientError> {
        self.call_with_headers(peer_name, peer, method, path, body, trace, &[])
            .await
    }

    /// [`Self::call`] with extra request headers (for example `Authorization`).
    #[allow(clippy::too_many_arguments)]
    pub async fn call_with_headers(
        &self,
        peer_name: &str,
        peer: &PeerConfig,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        trace: &TraceContext,
        headers: &[(String, String)],
    ) -> Result<PeerResponse, ClientError> {
        let target = self.target(peer)?;
        let mut last = ClientError::CircuitOpen(peer_name.to_string());
        for attempt in 1..=self.policy.max_attempts.max(1) {
            if !self.breaker_admit(&peer.url) {
                self.count(peer_name, "circuit_open");
                return Err(ClientError::CircuitOpen(peer_name.to_string()));
            }
            let child = trace.child();
            let result = tokio::time::timeout(
                self.policy.request_timeout,
                self.once(
                    &target,
                    peer_name,
                    method.clone(),
                    path,
                    body.clone(),
                    &child,
                    headers,
                ),
            )
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout(peer_name.to_string())));
            let result = result.and_then(|r| {
                if r.status >= 500 || r.status == 408 || r.status == 429 {
                    Err(ClientError::Status {
                        peer: peer_name.to_string(),
                        status: r.status,
                        body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
                    })
                } else {
                    Ok(r)
                }
            });
            match result {
                Ok(r) => {
                    self.breaker_record(&peer.url, true);
                    self.count(peer_name, "ok");
                    return Ok(r);
                }
                Err(e) => {
                    self.breaker_record(&peer.url, false);
                    self.count(peer_name, "error");
                    tracing::warn!(peer = peer_name, attempt, error = %e, "outgoing call failed");
                    if !e.is_transient() {
                        return Err(e);
                    }
                    last = e;
                    if attempt < self.policy.max_attempts {
                        tokio::time::sleep(self.backoff(attempt)).await;
                    }
                }
            }
        }
        Err(last)
    }

    fn count(&self, peer: &str, outcome: &str) {
        self.metrics
            .outgoing
            .get_or_create(&Metrics::labels(&[("peer", peer), ("outcome", outcome)]))
            .inc();
    }

    #[allow(clippy::too_many_arguments)]
    async fn once(
        &self,
        target: &Target,
        peer_name: &str,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        trace: &TraceContext,
        headers: &[(String, String)],
    ) -> Result<PeerResponse, ClientError> {
        let addr = format!("{}:{}", target.host, target.port);
        let mut conn = open_https(
            &target.host,
            target.port,
            target.tls.clone(),
            Some(self.policy.connect_timeout),
        )
        .await
        .map_err(|e| match e {
            OpenError::ConnectTimeout => ClientError::Timeout(addr.clone()),
            OpenError::Connect(reason) => ClientError::Connect {
                addr: addr.clone(),
                reason,
            },
            OpenError::Tls(reason) => ClientError::Tls {
                addr: addr.clone(),
                reason,
            },
            OpenError::Http(reason) => ClientError::Http {
                addr: addr.clone(),
                reason,
            },
        })?;
        let uri = format!("{}{}", target.base_path, path);
        let has_body = body.is_some();
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, &addr)
            .header("traceparent", trace.header_value());
        if has_body {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let too_large = || ClientError::BodyTooLarge {
            addr: addr.clone(),
            limit: MAX_RESPONSE_BYTES,
        };
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(too_large());
        }
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    ClientError::Http {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    }
                }
            })?
            .to_bytes()
            .to_vec();
        tracing::debug!(peer = peer_name, status, "outgoing call answered");
        Ok(PeerResponse { status, body })
    }
}

/// One HTTP/1.1 connection over TLS. Its driver task ends with it: dropping the connection
/// aborts the task.
pub struct HttpsConn<B> {
    pub sender: http1::SendRequest<B>,
    driver: tokio::task::JoinHandle<()>,
}

impl<B> Drop for HttpsConn<B> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The step at which opening a connection failed; callers name the peer in their own errors.
#[derive(Debug)]
pub enum OpenError {
    ConnectTimeout,
    Connect(String),
    Tls(String),
    Http(String),
}

/// TCP connect (bounded by `connect_timeout` when given), TLS handshake with `tls` (the server
/// name is `host`; how it is verified is `tls`'s business) and the HTTP/1.1 handshake.
pub async fn open_https<B>(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Option<Duration>,
) -> Result<HttpsConn<B>, OpenError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connect = TcpStream::connect((host, port));
    let tcp = match connect_timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| OpenError::ConnectTimeout)?,
        None => connect.await,
    }
    .map_err(|e| OpenError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|e| OpenError::Tls(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| OpenError::Tls(e.to_string()))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| OpenError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(HttpsConn { sender, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new("t"));
        let paths = crate::reload::MaterialPaths {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            bundle: dir.path().join("ca-bundle.pem"),
            acl: dir.path().join("acl.json"),
        };
        let store = MaterialStore::new("t", paths, metrics.clone());
        let policy = ClientPolicy {
            max_attempts: 1,
            breaker_threshold: 2,
            breaker_cooldown: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            ..ClientPolicy::default()
        };
        let client = MtlsClient::new(store, metrics, policy);
        // A port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let peer = PeerConfig {
            url: format!("https://{addr}"),
            spiffe_id: "spiffe://cluster.local/ns/x/sa/y".into(),
        };
        let tc = TraceContext::new_root();
        for _ in 0..2 {
            let e = client
                .call("p", &peer, http::Method::GET, "/", None, &tc)
                .await
                .expect_err("nothing listens");
            assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        }
        assert_eq!(client.breaker_state(&peer), BreakerState::Open);
        let e = client
            .call("p", &peer, http::Method::GET, "/", None, &tc)
            .await
            .expect_err("open");
        assert!(matches!(e, ClientError::CircuitOpen(_)), "{e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(client.breaker_state(&peer), BreakerState::HalfOpen);
        // The half-open trial goes out (and fails again: open once more).
        let e = client
            .call("p", &peer, http::Method::GET, "/", None, &tc)
            .await
            .expect_err("trial fails");
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert_eq!(client.breaker_state(&peer), BreakerState::Open);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new("t"));
        let paths = crate::reload::MaterialPaths {
            cert: dir.path().join("a"),
            key: dir.path().join("b"),
            bundle: dir.path().join("c"),
            acl: dir.path().join("d"),
        };
        let client = MtlsClient::new(
            MaterialStore::new("t", paths, metrics.clone()),
            metrics,
            ClientPolicy::default(),
        );
        let b1 = client.backoff(1);
        let b4 = client.backoff(4);
        assert!(
            b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
            "{b1:?}"
        );
        assert!(
            b4 >= Duration::from_millis(400) && b4 <= Duration::from_millis(800),
            "{b4:?}"
        );
        assert!(client.backoff(30) <= Duration::from_secs(2));
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("https://demo-device-hub.park.svc:8443").ok(),
            Some(("demo-device-hub.park.svc".to_string(), 8443, String::new()))
        );
        assert_eq!(
            parse_url("https://127.0.0.1:1234/base/").ok(),
            Some(("127.0.0.1".to_string(), 1234, "/base".to_string()))
        );
        assert_eq!(
            parse_url("https://[::1]:99").ok(),
            Some(("::1".to_string(), 99, String::new()))
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("https://x:notaport").is_err());
    }
}
