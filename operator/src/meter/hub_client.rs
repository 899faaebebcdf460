//! The operator's client of the device-hub API (contract: docs/contracts.md, "device-hub API").
//!
//! - mTLS with rustls (ring): the operator presents the client certificate of the hub's
//!   `<hub>-operator-client-tls` Secret and trusts the CAs of the hub's `<hub>-trust-bundle`
//!   ConfigMap. The server is verified like the services verify each other: the chain with webpki,
//!   then its URI SAN must equal `spiffe://<trustDomain>/ns/<ns>/sa/<hub>-device-hub`; the DNS name
//!   is not checked.
//! - One client per hub, cached and rebuilt when the Secret's or the ConfigMap's `resourceVersion`
//!   changes (checked with a metadata read at most every [`ClientSettings::recheck`]).
//! - HTTP/1.1 keep-alive connections in a small pool, a timeout on every request, at most
//!   [`ClientSettings::max_in_flight`] requests per hub and a request rate limit per hub.
//! - `PUT`s of Meters reconciled at the same moment are collected for [`ClientSettings::batch_window`]
//!   (up to [`MAX_BATCH`] items) and sent as one `POST /v1/meters:batch`, `DELETE`s likewise as one
//!   `POST /v1/meters:batchDelete`; a device-hub without a batch endpoint (`404`, `405`) gets single calls
//!   of that kind from then on.
//!
//! Key material is never logged: errors name the object and the problem, not the content.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use rand::Rng;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub use super::hub_batch::collect_batch;
use super::hub_batch::{
    batch_loop, match_batch_results, match_delete_results, reply_all, BatchAnswer, BatchResult,
    Pending,
};
pub use super::hub_tls::{client_config, spiffe_ids};
use super::state::DeviceRecord;
use crate::crd::meter::{DesiredState, Location, MeterSpec};
use crate::resources::names;
use crate::runtime::metrics::{Metrics, WriteLabels};
use crate::runtime::ratelimit::RateLimiter;

/// contract: device-hub API, `POST /v1/meters:batch` and `POST /v1/meters:batchDelete` take at
/// most 500 items.
pub const MAX_BATCH: usize = 500;
/// Largest response body read from device-hub (a full batch answer is far smaller).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Name of the service the operator calls (contract: Names).
pub const DEVICE_HUB: &str = "device-hub";

/// Errors of device-hub calls, each naming the hub, address or object an SRE has to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("reading {kind} {namespace}/{name}: {reason}")]
    Material {
        kind: &'static str,
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("TLS material of hub {namespace}/{hub} is unusable: {reason}")]
    TlsConfig {
        namespace: String,
        hub: String,
        reason: String,
    },
    #[error("connecting to device-hub at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake with device-hub at {addr} (expecting {spiffe_id}): {reason}")]
    Handshake {
        addr: String,
        spiffe_id: String,
        reason: String,
    },
    #[error("{method} {path} on device-hub at {addr}: {reason}")]
    Http {
        addr: String,
        method: String,
        path: String,
        reason: String,
    },
    #[error("{method} {path} on device-hub at {addr} timed out after {seconds}s")]
    Timeout {
        addr: String,
        method: String,
        path: String,
        seconds: u64,
    },
    #[error("device-hub at {addr} answered {status} to {method} {path}: {body}")]
    Status {
        addr: String,
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("device-hub rejected meter {serial}: {message}")]
    Rejected { serial: String, message: String },
    #[error("unexpected answer from device-hub at {addr} to {method} {path}: {reason}")]
    Decode {
        addr: String,
        method: String,
        path: String,
        reason: String,
    },
    #[error("the device-hub client of hub {hub} was shut down while the request waited")]
    Closed { hub: String },
}

impl HubError {
    /// `400` from device-hub: the meter's data is not acceptable (retrying the same spec is pointless).
    pub fn is_rejection(&self) -> bool {
        matches!(self, HubError::Rejected { .. })
    }

    /// A failure that suggests the cached TLS material is stale (for example after a CA rotation).
    fn suggests_stale_material(&self) -> bool {
        matches!(self, HubError::Handshake { .. })
    }

    /// Short label for metrics.
    fn label(&self) -> String {
        match self {
            HubError::Material { .. } | HubError::TlsConfig { .. } => "material".into(),
            HubError::Connect { .. } => "connect".into(),
            HubError::Handshake { .. } => "handshake".into(),
            HubError::Http { .. } | HubError::Decode { .. } => "http_error".into(),
            HubError::Timeout { .. } => "timeout".into(),
            HubError::Status { status, .. } => status.to_string(),
            HubError::Rejected { .. } => "400".into(),
            HubError::Closed { .. } => "closed".into(),
        }
    }
}

/// Knobs of the device-hub clients.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Whole-request timeout (connect, TLS, request and response).
    pub timeout: Duration,
    /// Concurrent requests per hub.
    pub max_in_flight: usize,
    /// Average requests per second per hub, and the burst.
    pub requests_per_second: f64,
    pub burst: u32,
    /// How long `PUT`s (and, separately, `DELETE`s) are collected into one batch.
    pub batch_window: Duration,
    /// Items per batch (at most [`MAX_BATCH`]).
    pub batch_max: usize,
    /// How often the Secret and ConfigMap versions are re-checked.
    pub recheck: Duration,
    /// Idle pooled connections older than this are closed.
    pub idle_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_in_flight: 16,
            requests_per_second: 50.0,
            burst: 50,
            batch_window: Duration::from_millis(50),
            batch_max: MAX_BATCH,
            recheck: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The `PUT` body (contract: device-hub API).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterPayload {
    pub serial_number: String,
    pub manufacturer: String,
    pub model: String,
    pub protocol: String,
    pub hes_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    pub desired_state: DesiredState,
}

impl From<&MeterSpec> for MeterPayload {
    fn from(spec: &MeterSpec) -> Self {
        Self {
            serial_number: spec.serial_number.clone(),
            manufacturer: spec.manufacturer.clone(),
            model: spec.model.clone(),
            protocol: spec.protocol.clone(),
            hes_id: spec.hes_id.clone(),
            location: spec.location.clone(),
            desired_state: spec.desired_state,
        }
    }
}

/// The part of device-hub's meter record the operator reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecordBody {
    device_id: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    provisioned_at: Option<String>,
}

impl From<RecordBody> for DeviceRecord {
    fn from(r: RecordBody) -> Self {
        DeviceRecord {
            device_id: r.device_id,
            state: r.state,
            provisioned_at: r.provisioned_at,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

/// Serial numbers travel in the URL path: only the characters device-hub accepts (which need no
/// escaping) are sent.
pub fn path_safe_serial(serial: &str) -> Result<(), HubError> {
    let ok = !serial.is_empty()
        && serial.len() <= 128
        && serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(HubError::Rejected {
            serial: serial.to_string(),
            message: "serialNumber may only contain letters, digits, '-', '_', '.', ':' (1..128 characters)".into(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Transport: pooled keep-alive HTTP/1.1 over mTLS
// ---------------------------------------------------------------------------------------------

/// Where one hub's device-hub is and who it must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubTarget {
    pub namespace: String,
    pub hub: String,
    pub trust_domain: String,
    /// device-hub's HTTPS port from the hub spec.
    pub port: u16,
}

impl HubTarget {
    /// `<hub>-device-hub.<ns>.svc` (contract: Names).
    pub fn host(&self) -> String {
        format!(
            "{}.{}.svc",
            names::object_name(&self.hub, DEVICE_HUB),
            self.namespace
        )
    }

    /// `spiffe://<trustDomain>/ns/<ns>/sa/<hub>-device-hub` (contract: SPIFFE identities).
    pub fn spiffe_id(&self) -> String {
        names::spiffe_id(
            &self.trust_domain,
            &self.namespace,
            &names::object_name(&self.hub, DEVICE_HUB),
        )
    }
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A finished HTTP exchange.
struct Answer {
    status: u16,
    body: Bytes,
}

struct Transport {
    target: HubTarget,
    addr: String,
    /// Connect here instead of resolving the Service name (tests, out-of-cluster runs).
    connect_to: Option<std::net::SocketAddr>,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
    limiter: RateLimiter,
    settings: ClientSettings,
    metrics: Arc<Metrics>,
    batch_supported: AtomicBool,
    batch_delete_supported: AtomicBool,
}

impl Transport {
    fn take_idle(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.settings.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.settings.max_in_flight {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, HubError> {
        let tcp = match self.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((self.target.host(), self.target.port)).await,
        };
        let tcp = tcp.map_err(|e| HubError::Connect {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| HubError::Handshake {
                addr: self.addr.clone(),
                spiffe_id: self.target.spiffe_id(),
                reason: e.to_string(),
            })?;
        let (sender, conn) =
            http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| HubError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("HTTP/1.1 handshake: {e}"),
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "device-hub connection closed");
            }
        });
        Ok(sender)
    }

    async fn exchange(
        &self,
        sender: &mut http1::SendRequest<Full<Bytes>>,
        method: &http::Method,
        path: &str,
        body: &Option<Bytes>,
    ) -> Result<Answer, hyper::Error> {
        sender.ready().await?;
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(
                http::header::HOST,
                format!("{}:{}", self.target.host(), self.target.port),
            )
            .header(http::header::ACCEPT, "application/json")
            .header("traceparent", traceparent());
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        // The builder only fails on invalid header values; ours are built from validated parts.
        let request = match builder.body(Full::new(body.clone().unwrap_or_default())) {
            Ok(r) => r,
            Err(_) => http::Request::new(Full::new(Bytes::new())),
        };
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::from_static(b"<unreadable or oversized body>"),
        };
        Ok(Answer { status, body })
    }

    /// One request with the per-hub concurrency bound, rate limit and timeout. A pooled connection
    /// the server closed in the meantime is retried once on a fresh one (every call is idempotent).
    async fn request(
        &self,
        op: &str,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, HubError> {
        let _permit = self.permits.acquire().await.map_err(|_| HubError::Closed {
            hub: self.target.hub.clone(),
        })?;
        self.limiter.acquire().await;
        let attempt = async {
            if let Some(mut sender) = self.take_idle() {
                if let Ok(answer) = self.exchange(&mut sender, &method, path, &body).await {
                    self.put_idle(sender);
                    return Ok(answer);
                }
            }
            let mut sender = self.connect().await?;
            let answer = self
                .exchange(&mut sender, &method, path, &body)
                .await
                .map_err(|e| HubError::Http {
                    addr: self.addr.clone(),
                    method: method.to_string(),
                    path: path.to_string(),
                    reason: e.to_string(),
                })?;
            self.put_idle(sender);
            Ok(answer)
        };
        let result = match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(HubError::Timeout {
                addr: self.addr.clone(),
                method: method.to_string(),
                path: path.to_string(),
                seconds: self.settings.timeout.as_secs(),
            }),
        };
        let result_label = match &result {
            Ok(a) => a.status.to_string(),
            Err(e) => e.label(),
        };
        self.metrics
            .hub_requests
            .get_or_create(&WriteLabels {
                resource: op.to_string(),
                verb: result_label,
            })
            .inc();
        result
    }

    fn status_error(&self, method: &str, path: &str, answer: &Answer) -> HubError {
        HubError::Status {
            addr: self.addr.clone(),
            method: method.to_string(),
            path: path.to_string(),
            status: answer.status,
            body: error_text(&answer.body),
        }
    }

    /// `PUT /v1/meters/{serial}`.
    async fn put_one(&self, payload: &MeterPayload) -> Result<DeviceRecord, HubError> {
        path_safe_serial(&payload.serial_number)?;
        let path = format!("/v1/meters/{}", payload.serial_number);
        let body = serde_json::to_vec(payload).map_err(|e| HubError::Decode {
            addr: self.addr.clone(),
            method: "PUT".into(),
            path: path.clone(),
            reason: format!("encoding the body: {e}"),
        })?;
        let answer = self
            .request(
                "PUT /v1/meters/{serial}",
                http::Method::PUT,
                &path,
                Some(Bytes::from(body)),
            )
            .await?;
        match answer.status {
            200 | 201 => serde_json::from_slice::<RecordBody>(&answer.body)
                .map(DeviceRecord::from)
                .map_err(|e| HubError::Decode {
                    addr: self.addr.clone(),
                    method: "PUT".into(),
                    path,
                    reason: e.to_string(),
                }),
            400 => Err(HubError::Rejected {
                serial: payload.serial_number.clone(),
                message: error_text(&answer.body),
            }),
            _ => Err(self.status_error("PUT", &path, &answer)),
        }
    }

    /// `POST` of a batch body to `path` (`/v1/meters:batch`, `/v1/meters:batchDelete`): the
    /// per-item results, or `Ok(None)` when device-hub has no such endpoint (`404`, `405`).
    async fn post_batch(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Option<Vec<BatchResult>>, HubError> {
        let answer = self
            .request(
                &format!("POST {path}"),
                http::Method::POST,
                path,
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        match answer.status {
            200 => {}
            404 | 405 => return Ok(None),
            _ => return Err(self.status_error("POST", path, &answer)),
        }
        let parsed: BatchAnswer =
            serde_json::from_slice(&answer.body).map_err(|e| HubError::Decode {
                addr: self.addr.clone(),
                method: "POST".into(),
                path: path.into(),
                reason: e.to_string(),
            })?;
        Ok(Some(parsed.results))
    }

    /// `POST /v1/meters:batch`; `Ok(None)` when device-hub has no batch endpoint.
    async fn put_batch(
        &self,
        payloads: &[MeterPayload],
    ) -> Result<Option<Vec<Result<DeviceRecord, HubError>>>, HubError> {
        let body = serde_json::json!({ "items": payloads });
        Ok(self
            .post_batch("/v1/meters:batch", &body)
            .await?
            .map(|results| match_batch_results(payloads, results, &self.addr)))
    }

    /// `DELETE /v1/meters/{serial}` (`204`, also when absent; `404` counts as done too).
    async fn delete(&self, serial: &str) -> Result<(), HubError> {
        path_safe_serial(serial)?;
        let path = format!("/v1/meters/{serial}");
        let answer = self
            .request(
                "DELETE /v1/meters/{serial}",
                http::Method::DELETE,
                &path,
                None,
            )
            .await?;
        match answer.status {
            200 | 202 | 204 | 404 => Ok(()),
            400 => Err(HubError::Rejected {
                serial: serial.to_string(),
                message: error_text(&answer.body),
            }),
            _ => Err(self.status_error("DELETE", &path, &answer)),
        }
    }

    /// `POST /v1/meters:batchDelete`; `Ok(None)` when device-hub has no such endpoint.
    async fn delete_batch(
        &self,
        serials: &[String],
    ) -> Result<Option<Vec<Result<(), HubError>>>, HubError> {
        let body = serde_json::json!({ "serialNumbers": serials });
        Ok(self
            .post_batch("/v1/meters:batchDelete", &body)
            .await?
            .map(|results| match_delete_results(serials, results, &self.addr)))
    }

    /// Sends a collected group of `DELETE`s: one batch when possible, single `DELETE`s otherwise.
    async fn flush_deletes(self: Arc<Self>, items: Vec<Pending<String, ()>>) {
        let serials: Vec<String> = items.iter().map(|i| i.item.clone()).collect();
        let results = self
            .batch_or_each(
                &serials,
                &self.batch_delete_supported,
                "DELETE",
                self.delete_batch(&serials),
                |serial| self.delete(serial),
            )
            .await;
        reply_all(items, results);
    }

    /// Sends a collected group of `PUT`s: one batch when possible, single `PUT`s otherwise.
    async fn flush_puts(self: Arc<Self>, items: Vec<Pending<MeterPayload, DeviceRecord>>) {
        let payloads: Vec<MeterPayload> = items.iter().map(|i| i.item.clone()).collect();
        let results = self
            .batch_or_each(
                &payloads,
                &self.batch_supported,
                "PUT",
                self.put_batch(&payloads),
                |payload| self.put_one(payload),
            )
            .await;
        reply_all(items, results);
    }

    /// One result per item: from `batch` (not started unless used) when there are several items
    /// and device-hub takes batches of these calls (`supported`), else from one `single` call per
    /// item. A device-hub without the batch endpoint gets single calls of this kind from then on;
    /// a failed batch fails every item (they are retried by their reconciles).
    async fn batch_or_each<'a, T, R, B, S, SFut>(
        &'a self,
        items: &'a [T],
        supported: &AtomicBool,
        method: &str,
        batch: B,
        single: S,
    ) -> Vec<Result<R, HubError>>
    where
        B: std::future::Future<Output = Result<Option<Vec<Result<R, HubError>>>, HubError>>,
        S: Fn(&'a T) -> SFut,
        SFut: std::future::Future<Output = Result<R, HubError>>,
    {
        let each = || futures::future::join_all(items.iter().map(&single));
        if items.len() < 2 || !supported.load(Ordering::Relaxed) {
            return each().await;
        }
        match batch.await {
            Ok(Some(results)) => results,
            Ok(None) => {
                tracing::info!(hub = %self.target.hub, namespace = %self.target.namespace,
                    "device-hub has no batch endpoint for {method}s; using single {method}s");
                supported.store(false, Ordering::Relaxed);
                each().await
            }
            Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// The `error` field of a JSON error body, else the (truncated) text.
fn error_text(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// A fresh W3C `traceparent` (contract: Tracing).
fn traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random::<u128>().max(1);
    let span: u64 = rng.random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

// ---------------------------------------------------------------------------------------------
// Per-hub client and the cache
// ---------------------------------------------------------------------------------------------

/// The client of one hub's device-hub.
pub struct HubClient {
    transport: Arc<Transport>,
    puts: mpsc::Sender<Pending<MeterPayload, DeviceRecord>>,
    deletes: mpsc::Sender<Pending<String, ()>>,
}

impl HubClient {
    /// A client for `target` with the TLS configuration from [`client_config`]. With `connect_to`,
    /// TCP connects there instead of resolving `<hub>-device-hub.<ns>.svc` (the TLS checks stay the
    /// same). Spawns the hub's batching task: call it inside a Tokio runtime.
    pub fn new(
        target: HubTarget,
        tls: Arc<ClientConfig>,
        settings: ClientSettings,
        metrics: Arc<Metrics>,
        connect_to: Option<std::net::SocketAddr>,
    ) -> Result<Self, HubError> {
        let host = target.host();
        let server_name = ServerName::try_from(host.clone()).map_err(|e| HubError::TlsConfig {
            namespace: target.namespace.clone(),
            hub: target.hub.clone(),
            reason: format!("{host:?} is not a valid server name: {e}"),
        })?;
        let transport = Arc::new(Transport {
            addr: match connect_to {
                Some(a) => format!("{host}:{} ({a})", target.port),
                None => format!("{host}:{}", target.port),
            },
            connect_to,
            target,
            server_name,
            tls: TlsConnector::from(tls),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(settings.max_in_flight.max(1)),
            limiter: RateLimiter::new(settings.requests_per_second, settings.burst),
            batch_supported: AtomicBool::new(true),
            batch_delete_supported: AtomicBool::new(true),
            metrics,
            settings,
        });
        let (puts, rx) = mpsc::channel(MAX_BATCH * 2);
        let (window, max) = (
            transport.settings.batch_window,
            transport.settings.batch_max,
        );
        let t = transport.clone();
        tokio::spawn(batch_loop(window, max, rx, move |items| {
            t.clone().flush_puts(items)
        }));
        let (deletes, rx) = mpsc::channel(MAX_BATCH * 2);
        let t = transport.clone();
        tokio::spawn(batch_loop(window, max, rx, move |items| {
            t.clone().flush_deletes(items)
        }));
        Ok(Self {
            transport,
            puts,
            deletes,
        })
    }

    /// Creates or updates a meter (idempotent); joins the current batch of this hub.
    pub async fn put(&self, payload: MeterPayload) -> Result<DeviceRecord, HubError> {
        path_safe_serial(&payload.serial_number)?;
        self.join(&self.puts, payload).await
    }

    /// Deletes a meter (idempotent); joins the current delete batch of this hub.
    pub async fn delete(&self, serial: &str) -> Result<(), HubError> {
        path_safe_serial(serial)?;
        self.join(&self.deletes, serial.to_string()).await
    }

    async fn join<T, R>(
        &self,
        queue: &mpsc::Sender<Pending<T, R>>,
        item: T,
    ) -> Result<R, HubError> {
        let closed = || HubError::Closed {
            hub: self.transport.target.hub.clone(),
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

struct Cached {
    target: HubTarget,
    secret_version: String,
    bundle_version: String,
    checked: Instant,
    client: Arc<HubClient>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// One [`HubClient`] per hub, rebuilt when its TLS material or address changes.
pub struct HubClients {
    kube: kube::Client,
    metrics: Arc<Metrics>,
    settings: ClientSettings,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl HubClients {
    pub fn new(kube: kube::Client, metrics: Arc<Metrics>, settings: ClientSettings) -> Self {
        Self {
            kube,
            metrics,
            settings,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, namespace: &str, hub: &str) -> Slot {
        match self.slots.lock() {
            Ok(mut slots) => slots
                .entry((namespace.to_string(), hub.to_string()))
                .or_default()
                .clone(),
            // A poisoned map only loses the cache: build an uncached client.
            Err(_) => Slot::default(),
        }
    }

    /// Drops the client of a hub that no longer exists.
    pub fn forget(&self, namespace: &str, hub: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&(namespace.to_string(), hub.to_string()));
        }
    }

    /// The client for `target`, (re)built when needed.
    pub async fn get(&self, target: &HubTarget) -> Result<Arc<HubClient>, HubError> {
        let slot = self.slot(&target.namespace, &target.hub);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if &c.target == target && c.checked.elapsed() < self.settings.recheck {
                return Ok(c.client.clone());
            }
        }
        let secret_name = names::operator_client_secret(&target.hub);
        let bundle_name = names::trust_bundle(&target.hub);
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &target.namespace);
        let maps: Api<ConfigMap> = Api::namespaced(self.kube.clone(), &target.namespace);
        if let Some(c) = cached.as_mut() {
            if &c.target == target {
                let secret_meta = secrets.get_metadata(&secret_name).await;
                let bundle_meta = maps.get_metadata(&bundle_name).await;
                if let (Ok(s), Ok(b)) = (secret_meta, bundle_meta) {
                    if s.metadata.resource_version.as_deref() == Some(c.secret_version.as_str())
                        && b.metadata.resource_version.as_deref() == Some(c.bundle_version.as_str())
                    {
                        c.checked = Instant::now();
                        return Ok(c.client.clone());
                    }
                }
            }
        }
        let material = |kind: &'static str, name: &str, reason: String| HubError::Material {
            kind,
            namespace: target.namespace.clone(),
            name: name.to_string(),
            reason,
        };
        let secret = secrets
            .get_opt(&secret_name)
            .await
            .map_err(|e| material("Secret", &secret_name, e.to_string()))?
            .ok_or_else(|| {
                material(
                    "Secret",
                    &secret_name,
                    "not found (the DeviceHub controller issues the operator's client certificate)"
                        .into(),
                )
            })?;
        let bundle = maps
            .get_opt(&bundle_name)
            .await
            .map_err(|e| material("ConfigMap", &bundle_name, e.to_string()))?
            .ok_or_else(|| {
                material(
                    "ConfigMap",
                    &bundle_name,
                    "not found (the DeviceHub controller publishes it)".into(),
                )
            })?;
        let data = secret.data.unwrap_or_default();
        let key_of = |k: &str| {
            data.get(k)
                .map(|b| b.0.clone())
                .ok_or_else(|| material("Secret", &secret_name, format!("has no key {k}")))
        };
        let cert_pem = key_of("tls.crt")?;
        let key_pem = key_of("tls.key")?;
        let bundle_pem = bundle
            .data
            .as_ref()
            .and_then(|d| d.get(names::TRUST_BUNDLE_KEY))
            .ok_or_else(|| {
                material(
                    "ConfigMap",
                    &bundle_name,
                    format!("has no key {}", names::TRUST_BUNDLE_KEY),
                )
            })?;
        let tls = client_config(
            &cert_pem,
            &key_pem,
            bundle_pem.as_bytes(),
            &target.spiffe_id(),
        )
        .map_err(|reason| HubError::TlsConfig {
            namespace: target.namespace.clone(),
            hub: target.hub.clone(),
            reason,
        })?;
        let client = Arc::new(HubClient::new(
            target.clone(),
            tls,
            self.settings.clone(),
            self.metrics.clone(),
            None,
        )?);
        tracing::info!(hub = %target.hub, namespace = %target.namespace, spiffe_id = %target.spiffe_id(),
            "device-hub client (re)built");
        *cached = Some(Cached {
            target: target.clone(),
            secret_version: secret.metadata.resource_version.unwrap_or_default(),
            bundle_version: bundle.metadata.resource_version.unwrap_or_default(),
            checked: Instant::now(),
            client: client.clone(),
        });
        Ok(client)
    }

    /// After an error that may come from stale material, re-check the versions on the next call.
    pub async fn note_error(&self, target: &HubTarget, error: &HubError) {
        if !error.suggests_stale_material() {
            return;
        }
        let slot = self.slot(&target.namespace, &target.hub);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_mut() {
            c.checked = Instant::now() - self.settings.recheck - Duration::from_secs(1);
        }
    }
}

/// A payload with placeholder fields, for tests.
#[cfg(test)]
pub(super) fn test_payload(serial: &str) -> MeterPayload {
    MeterPayload {
        serial_number: serial.into(),
        manufacturer: "m".into(),
        model: "x".into(),
        protocol: "p".into(),
        hes_id: "h".into(),
        location: None,
        desired_state: DesiredState::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(serial: &str) -> MeterPayload {
        test_payload(serial)
    }

    #[test]
    fn payload_follows_the_contract() {
        let mut p = payload("SN-1");
        p.location = Some(Location {
            address: Some("Main St 1".into()),
            latitude: Some(1.5),
            longitude: None,
        });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"serialNumber": "SN-1", "manufacturer": "m", "model": "x", "protocol": "p",
                "hesId": "h", "location": {"address": "Main St 1", "latitude": 1.5}, "desiredState": "Active"})
        );
    }

    #[test]
    fn serials_are_checked_before_they_reach_a_path() {
        assert!(path_safe_serial("LGZ-0001.a:b_c").is_ok());
        for bad in ["", "a/b", "a b", "../x", "a?b", &"x".repeat(129)] {
            assert!(path_safe_serial(bad).unwrap_err().is_rejection(), "{bad:?}");
        }
    }

    #[test]
    fn error_text_prefers_the_json_error() {
        assert_eq!(error_text(br#"{"error":"bad payload"}"#), "bad payload");
        assert_eq!(error_text(b"plain"), "plain");
        assert!(error_text(&[b'x'; 1000]).ends_with('…'));
    }

    #[test]
    fn traceparent_is_w3c() {
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }

    #[test]
    fn target_names_follow_the_contract() {
        let t = HubTarget {
            namespace: "park".into(),
            hub: "demo".into(),
            trust_domain: "cluster.local".into(),
            port: 8443,
        };
        assert_eq!(t.host(), "demo-device-hub.park.svc");
        assert_eq!(
            t.spiffe_id(),
            "spiffe://cluster.local/ns/park/sa/demo-device-hub"
        );
    }
}
