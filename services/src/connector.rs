//! iec61968-connector: plain-HTTP ingest from the HES (contract: Ports, `ingest` 8090), normalization
//! of IEC 61968-9 messages, forwarding to device-hub over mTLS, and a persisted dead-letter store.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::client::{ClientPolicy, MtlsClient};
use crate::config::PeerConfig;
use crate::iec::{parse_events, NormalizedEvent};
use crate::metrics::Metrics;
use crate::server::{
    bind, json_error, serve_plain, start_common, traced_app, RequestTrace, Running, ServerError,
    ServiceContext,
};
use crate::store::{queue_key, Store};
use crate::util::{rfc3339, TraceContext};

pub const SERVICE: &str = "iec61968-connector";
pub const STORE_FILE: &str = "iec61968-connector.redb";
pub const DEAD_LETTERS: &str = "dead_letters";
const MAX_INGEST_BYTES: usize = 16 << 20;

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
}

struct Connector {
    store: Store,
    client: Arc<MtlsClient>,
    hub: Option<PeerConfig>,
    metrics: Arc<Metrics>,
}

impl Connector {
    async fn forward(&self, ev: &NormalizedEvent, trace: &TraceContext) -> Result<(), String> {
        let hub = self
            .hub
            .as_ref()
            .ok_or_else(|| "peers.device-hub missing in config.json".to_string())?;
        let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
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
            Ok(r) => Err(format!(
                "device-hub answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn refresh_gauge(&self) {
        if let Ok(n) = self.store.run(|s| s.count(DEAD_LETTERS)).await {
            self.metrics.dead_letters.set(n as i64);
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

async fn ingest(
    State(c): State<Arc<Connector>>,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let events = match parse_events(ct, &body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "ingest refused");
            return json_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let (mut forwarded, mut dead) = (0usize, 0usize);
    for ev in &events {
        match c.forward(ev, &trace.0).await {
            Ok(()) => forwarded += 1,
            Err(err) => {
                tracing::warn!(serial = %ev.serial_number, error = %err, "event dead-lettered");
                let id = queue_key();
                let dl = DeadLetter {
                    id: id.clone(),
                    event: ev.clone(),
                    error: err,
                    failed_at: rfc3339(chrono::Utc::now()),
                    attempts: 1,
                    traceparent: trace.0.header_value(),
                };
                if let Err(e) = c
                    .store
                    .run(move |s| s.put_json(DEAD_LETTERS, &id, &dl))
                    .await
                {
                    return internal(e);
                }
                dead += 1;
            }
        }
    }
    c.refresh_gauge().await;
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
        Err(e) => internal(e),
    }
}

async fn replay(State(c): State<Arc<Connector>>) -> Response {
    let items = match c
        .store
        .run(|s| s.list_json::<DeadLetter>(DEAD_LETTERS))
        .await
    {
        Ok(i) => i,
        Err(e) => return internal(e),
    };
    let (mut replayed, mut remaining) = (0usize, 0usize);
    for (key, mut dl) in items {
        let trace = TraceContext::from_header_or_new(Some(&dl.traceparent));
        let r = c.forward(&dl.event, &trace).await;
        let k = key.clone();
        let res = match r {
            Ok(()) => {
                replayed += 1;
                c.store.run(move |s| s.delete(DEAD_LETTERS, &k)).await
            }
            Err(err) => {
                remaining += 1;
                dl.error = err;
                dl.attempts = dl.attempts.saturating_add(1);
                dl.failed_at = rfc3339(chrono::Utc::now());
                c.store
                    .run(move |s| s.put_json(DEAD_LETTERS, &k, &dl))
                    .await
            }
        };
        if let Err(e) = res {
            return internal(e);
        }
    }
    c.refresh_gauge().await;
    Json(serde_json::json!({ "replayed": replayed, "remaining": remaining })).into_response()
}

fn ingest_router(c: Arc<Connector>) -> Router {
    Router::new()
        .route("/ingest", post(ingest))
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/replay", post(replay))
        .layer(DefaultBodyLimit::max(MAX_INGEST_BYTES))
        .with_state(c)
}

/// Starts the connector: HTTPS (mTLS, no API of its own), health port, ingest port.
pub async fn start(
    ctx: ServiceContext,
    ingest_addr: std::net::SocketAddr,
) -> Result<Running, ServerError> {
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
    });
    if c.hub.is_none() {
        tracing::warn!(
            "peers.device-hub missing in config.json: every event will be dead-lettered"
        );
    }
    c.refresh_gauge().await;
    let listener = bind(ingest_addr).await?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: ingest_addr,
        source,
    })?;
    let mut running = start_common(&ctx, Router::new()).await?;
    running.tasks.spawn(serve_plain(
        listener,
        traced_app(ingest_router(c), &ctx),
        ctx.shutdown.clone(),
    ));
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
