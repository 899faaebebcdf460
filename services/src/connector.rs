//! iec61968-connector: authenticated, rate-limited ingest from the HES (contract: Ports, `ingest`
//! 8090; ingest API), normalization of IEC 61968-9 messages, forwarding to device-hub over mTLS,
//! and a persisted dead-letter store that is redelivered automatically once device-hub answers
//! again; the dead letters are served on the mTLS port only, behind allowed-peers.json.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::client::{refused_for_good, ClientPolicy, MtlsClient};
use crate::config::{IngestAuthSource, PeerConfig};
use crate::iec::{parse_events, IngestError, Limits, NormalizedEvent};
use crate::ingest_auth::{authenticate, rate_limit, IngestAuth, IngestGuard};
use crate::metrics::Metrics;
use crate::retry::RoundBackoff;
use crate::server::{
    bind, internal_error, json_error, serve_https, serve_plain, start_common, traced_app,
    RequestTrace, Running, ServerError, ServiceContext,
};
use crate::store::{queue_key, Store, StoreError};
use crate::util::{rfc3339, TraceContext};

pub const SERVICE: &str = "iec61968-connector";
pub const STORE_FILE: &str = "iec61968-connector.redb";
pub const DEAD_LETTERS: &str = "dead_letters";
/// Ingest documents parsed at the same time (see `Connector::parsing`).
const PARSE_PERMITS: usize = 2;
/// Automatic redelivery: the first round this long after an event was dead-lettered, doubling
/// while device-hub stays unreachable, up to the cap.
const REDELIVERY_FIRST: Duration = Duration::from_secs(2);
const REDELIVERY_MAX: Duration = Duration::from_secs(60);
const REDELIVERY_PAGE: usize = 100;

/// An event that could not be delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub event: NormalizedEvent,
    pub error: String,
    pub failed_at: String,
    pub attempts: u32,
    pub traceparent: String,
    /// device-hub refused the event itself: automatic redelivery skips it (it would be refused
    /// again); `POST /dead-letters/replay` still tries it.
    #[serde(default)]
    pub rejected: bool,
}

/// Why an event did not reach device-hub.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ForwardError {
    /// Not reached, or an answer worth retrying (transport, TLS, 5xx, 408, 429, 403 from an ACL
    /// that may still change): automatic redelivery retries it.
    Undelivered(String),
    /// device-hub refused the payload (400, 413, 422): the same event is refused every time.
    Rejected(String),
}

impl ForwardError {
    fn from_status(status: u16, body: &[u8]) -> Self {
        let message = format!(
            "device-hub answered {status}: {}",
            String::from_utf8_lossy(body)
        );
        if refused_for_good(status) {
            ForwardError::Rejected(message)
        } else {
            ForwardError::Undelivered(message)
        }
    }

    fn message(&self) -> &str {
        match self {
            ForwardError::Undelivered(m) | ForwardError::Rejected(m) => m,
        }
    }
}

/// What one pass over the dead letters did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Round {
    replayed: usize,
    /// Stopped at an event device-hub did not take (unreachable): the rest waits for the next round.
    stalled: bool,
}

struct Connector {
    store: Store,
    client: Arc<MtlsClient>,
    hub: Option<PeerConfig>,
    metrics: Arc<Metrics>,
    /// Bounds on one ingest body (`ingest.limits`).
    limits: Limits,
    /// Documents parsed at the same time: each may take a few tens of MiB at the limits, so this
    /// bounds the parser's share of the memory limit whatever the number of requests.
    parsing: Arc<tokio::sync::Semaphore>,
    /// One redelivery round at a time (automatic or `POST /dead-letters/replay`), so that no
    /// event is sent twice by two rounds.
    replay_lock: tokio::sync::Mutex<()>,
    /// Signalled whenever an event is dead-lettered.
    dead_lettered: Notify,
    shutdown: watch::Receiver<bool>,
}

impl Connector {
    async fn forward(
        &self,
        ev: &NormalizedEvent,
        trace: &TraceContext,
    ) -> Result<(), ForwardError> {
        let hub = self.hub.as_ref().ok_or_else(|| {
            ForwardError::Undelivered("peers.device-hub missing in config.json".to_string())
        })?;
        let body = serde_json::to_vec(ev).map_err(|e| ForwardError::Rejected(e.to_string()))?;
        match self
            .client
            .call(
                "device-hub",
                hub,
                http::Method::POST,
                "/v1/events",
                Some(body),
                trace,
            )
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(ForwardError::from_status(r.status, &r.body)),
            Err(e) => Err(ForwardError::Undelivered(e.to_string())),
        }
    }

    /// Sends the dead letters again, oldest first, deleting each one device-hub takes. Stops at
    /// the first one device-hub does not take for a reason other than refusing it (it is
    /// unreachable; the rest would fail the same way). `retry_rejected`: also events device-hub
    /// refused before.
    async fn redeliver_round(&self, retry_rejected: bool) -> Result<Round, StoreError> {
        let _one_round_at_a_time = self.replay_lock.lock().await;
        let mut round = Round::default();
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let page = self
                .store
                .run(move |s| {
                    s.page_after::<DeadLetter>(DEAD_LETTERS, from.as_deref(), REDELIVERY_PAGE)
                })
                .await?;
            let full = page.len() >= REDELIVERY_PAGE;
            for (key, mut dl) in page {
                after = Some(key.clone());
                if *self.shutdown.borrow() {
                    return Ok(round);
                }
                if dl.rejected && !retry_rejected {
                    continue;
                }
                let trace = TraceContext::from_header_or_new(Some(&dl.traceparent));
                let mut shutdown = self.shutdown.clone();
                let forwarded = tokio::select! {
                    r = self.forward(&dl.event, &trace) => r,
                    // Shutting down: the event stays as it is, for the next run.
                    _ = shutdown.changed() => return Ok(round),
                };
                match forwarded {
                    Ok(()) => {
                        self.store
                            .run(move |s| s.delete(DEAD_LETTERS, &key))
                            .await?;
                        round.replayed += 1;
                    }
                    Err(err) => {
                        dl.rejected = matches!(err, ForwardError::Rejected(_));
                        dl.error = err.message().to_string();
                        dl.attempts = dl.attempts.saturating_add(1);
                        dl.failed_at = rfc3339(chrono::Utc::now());
                        self.store
                            .run(move |s| s.put_json(DEAD_LETTERS, &key, &dl))
                            .await?;
                        if !matches!(err, ForwardError::Rejected(_)) {
                            round.stalled = true;
                            return Ok(round);
                        }
                    }
                }
            }
            if !full {
                return Ok(round);
            }
        }
    }

    /// Dead letters left in the store (also the `mpm_dead_letters` gauge).
    async fn count_dead_letters(&self) -> Result<u64, StoreError> {
        let n = self.store.run(|s| s.count(DEAD_LETTERS)).await?;
        self.metrics
            .dead_letters
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        Ok(n)
    }
}

/// Redelivers dead letters without an operator: a round soon after an event is dead-lettered
/// (and at start, for what a previous run left), then with backoff while device-hub stays
/// unreachable, and idle while nothing retryable is left.
async fn redeliver_dead_letters(c: Arc<Connector>) {
    let mut shutdown = c.shutdown.clone();
    let mut backoff = RoundBackoff::new(REDELIVERY_FIRST, REDELIVERY_MAX);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => return,
        }
        let round = c.redeliver_round(false).await;
        let _ = c.count_dead_letters().await;
        match round {
            Ok(Round {
                stalled: true,
                replayed,
            }) => {
                wait = backoff.failed();
                tracing::info!(
                    replayed,
                    retry_in_ms = wait.as_millis() as u64,
                    "device-hub still unreachable; dead letters wait"
                );
                continue;
            }
            Ok(Round { replayed, .. }) => {
                backoff.succeeded();
                if replayed > 0 {
                    tracing::info!(replayed, "dead letters redelivered");
                }
            }
            Err(e) => {
                wait = backoff.failed();
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read or update the dead-letter store");
                continue;
            }
        }
        tokio::select! {
            _ = c.dead_lettered.notified() => {},
            _ = shutdown.changed() => return,
        }
        wait = REDELIVERY_FIRST;
    }
}

async fn ingest(
    State(c): State<Arc<Connector>>,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let refuse = |e: IngestError| {
        tracing::warn!(error = %e, "ingest refused");
        json_error(e.status(), e.to_string())
    };
    // The body is read up to `maxBodyBytes` (the `DefaultBodyLimit` of the router), never more.
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(IngestError::BodyTooLarge {
                max: c.limits.max_body_bytes,
            })
        }
        Err(r) => return r.into_response(),
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let limits = c.limits;
    let permit = match c.parsing.clone().acquire_owned().await {
        Ok(p) => p,
        Err(e) => return internal_error(e),
    };
    // Off the async workers (a document at the limits takes a while to parse), holding the
    // permit until the parse ends even if the client goes away meanwhile.
    let parsed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        parse_events(&ct, &body, &limits)
    })
    .await;
    let events = match parsed {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return refuse(e),
        Err(e) => return internal_error(e),
    };
    let (mut forwarded, mut dead) = (0usize, 0usize);
    for ev in &events {
        match c.forward(ev, &trace.0).await {
            Ok(()) => forwarded += 1,
            Err(err) => {
                tracing::warn!(serial = %ev.serial_number, error = %err.message(), "event dead-lettered");
                let id = queue_key();
                let dl = DeadLetter {
                    id: id.clone(),
                    event: ev.clone(),
                    error: err.message().to_string(),
                    failed_at: rfc3339(chrono::Utc::now()),
                    attempts: 1,
                    traceparent: trace.0.header_value(),
                    rejected: matches!(err, ForwardError::Rejected(_)),
                };
                if let Err(e) = c
                    .store
                    .run(move |s| s.put_json(DEAD_LETTERS, &id, &dl))
                    .await
                {
                    return internal_error(e);
                }
                dead += 1;
                c.dead_lettered.notify_one();
            }
        }
    }
    let _ = c.count_dead_letters().await;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "accepted": events.len(), "forwarded": forwarded, "deadLettered": dead
        })),
    )
        .into_response()
}

async fn list_dead_letters(State(c): State<Arc<Connector>>) -> Response {
    match c
        .store
        .run(|s| s.list_json::<DeadLetter>(DEAD_LETTERS))
        .await
    {
        Ok(items) => Json(serde_json::json!({
            "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => internal_error(e),
    }
}

/// `POST /dead-letters/replay`: one round now, including events device-hub refused before.
async fn replay(State(c): State<Arc<Connector>>) -> Response {
    let round = match c.redeliver_round(true).await {
        Ok(r) => r,
        Err(e) => return internal_error(e),
    };
    if round.stalled {
        // What this round could not send (refused events among it, now marked retryable) goes
        // back to the automatic rounds.
        c.dead_lettered.notify_one();
    }
    match c.count_dead_letters().await {
        Ok(remaining) => Json(serde_json::json!({
            "replayed": round.replayed, "remaining": remaining
        }))
        .into_response(),
        Err(e) => internal_error(e),
    }
}

/// The ingest port: `POST /ingest` for an authenticated HES; every request (unknown paths too)
/// takes a token of its source's rate limit first. The dead letters are not served here.
fn ingest_router(c: Arc<Connector>, guard: Arc<IngestGuard>) -> Router {
    Router::new()
        .route("/ingest", post(ingest))
        .layer(DefaultBodyLimit::max(c.limits.max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            authenticate,
        ))
        .with_state(c)
        .layer(axum::middleware::from_fn_with_state(guard, rate_limit))
}

/// The mTLS port's API (allowed-peers.json applies): the dead letters.
fn dead_letter_router(c: Arc<Connector>) -> Router {
    Router::new()
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/replay", post(replay))
        .with_state(c)
}

/// Starts the connector: HTTPS (mTLS: the dead letters), health port, ingest port.
pub async fn start(
    ctx: ServiceContext,
    ingest_addr: std::net::SocketAddr,
) -> Result<Running, ServerError> {
    let hes = ctx.config.hes.clone().unwrap_or_default();
    let auth = IngestAuth::new(hes.ingest_auth()?);
    let guard = IngestGuard::new(auth.clone(), hes.rate_limit()?, ctx.metrics.clone());
    auth.watch(&ctx.material);
    if *auth.source() == IngestAuthSource::Unconfigured {
        tracing::warn!(
            "no ingest authentication configured (hes.tokenFile or hes.clientCaFile): the ingest \
             port refuses every request; set spec.hes.auth in the DeviceHub"
        );
    }
    let store = Store::open(&ctx.paths.data_dir, STORE_FILE)?;
    let policy = ClientPolicy {
        max_attempts: 3,
        ..ClientPolicy::default()
    };
    let c = Arc::new(Connector {
        store,
        client: Arc::new(MtlsClient::new(
            ctx.material.clone(),
            ctx.metrics.clone(),
            policy,
        )),
        hub: ctx.config.peers.get("device-hub").cloned(),
        metrics: ctx.metrics.clone(),
        limits: ctx.config.ingest.limits,
        parsing: Arc::new(tokio::sync::Semaphore::new(PARSE_PERMITS)),
        replay_lock: tokio::sync::Mutex::new(()),
        dead_lettered: Notify::new(),
        shutdown: ctx.shutdown.clone(),
    });
    if c.hub.is_none() {
        tracing::warn!(
            "peers.device-hub missing in config.json: every event will be dead-lettered"
        );
    }
    c.count_dead_letters().await?;
    let listener = bind(ingest_addr).await?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: ingest_addr,
        source,
    })?;
    let mut running = start_common(&ctx, dead_letter_router(c.clone())).await?;
    let app = traced_app(ingest_router(c.clone(), guard), &ctx);
    match auth.source() {
        IngestAuthSource::ClientCa(_) => {
            let tls = auth.server_config(ctx.material.clone())?;
            running.tasks.spawn(serve_https(
                listener,
                tls,
                app,
                ctx.metrics.clone(),
                ctx.shutdown.clone(),
                ctx.drain_deadline,
            ));
        }
        IngestAuthSource::Token(_) | IngestAuthSource::Unconfigured => {
            running.tasks.spawn(serve_plain(
                listener,
                app,
                ctx.shutdown.clone(),
                ctx.drain_deadline,
            ));
        }
    }
    running.tasks.spawn(async move {
        redeliver_dead_letters(c).await;
        Ok(())
    });
    tracing::info!(ingest = %local, "ingest listening");
    running.ingest_addr = Some(local);
    Ok(running)
}

/// The ingest address: contract port 8090; `MPM_INGEST_ADDR` overrides it for local runs.
pub fn ingest_addr_from_env() -> Result<std::net::SocketAddr, crate::config::ConfigError> {
    let value = std::env::var("MPM_INGEST_ADDR")
        .unwrap_or_else(|_| crate::config::DEFAULT_INGEST_ADDR.to_string());
    value
        .parse()
        .map_err(|source| crate::config::ConfigError::Addr {
            var: "MPM_INGEST_ADDR",
            value: value.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_payload_is_rejected_for_good() {
        for status in [400, 413, 422] {
            assert!(
                matches!(
                    ForwardError::from_status(status, b"bad"),
                    ForwardError::Rejected(m) if m == format!("device-hub answered {status}: bad")
                ),
                "{status}"
            );
        }
        // An ACL that does not allow the connector yet, a missing route during a rollout, or
        // an overloaded hub: worth another round.
        for status in [401, 403, 404, 409, 429, 500, 503] {
            assert!(
                matches!(
                    ForwardError::from_status(status, b""),
                    ForwardError::Undelivered(_)
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn dead_letters_stored_before_the_rejected_flag_are_retried() {
        let stored = serde_json::json!({
            "id": "1", "error": "connect: refused", "failedAt": "2026-11-22T10:00:00Z",
            "attempts": 1, "traceparent": "",
            "event": {"kind": "reading", "serialNumber": "M", "timestamp": "2026-11-22T10:00:00Z"}
        });
        let dl: DeadLetter = serde_json::from_value(stored).expect("old record");
        assert!(!dl.rejected);
    }
}
