//! smoc-service (contract: smoc-service API): stores devices and readings written by device-hub,
//! and answers queries authorized by a JWT with realm role `reader`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::jwt::JwtVerifier;
use crate::server::{json_error, peer_of, start_common, Running, ServerError, ServiceContext};
use crate::store::Store;
use crate::util::{parse_rfc3339, rfc3339, rfc3339_millis};

pub const SERVICE: &str = "smoc-service";
pub const STORE_FILE: &str = "smoc-service.redb";
pub const DEVICES: &str = "devices";
pub const READINGS: &str = "readings";
const MAX_READINGS: usize = 10_000;

/// A reading as posted by device-hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    pub serial_number: String,
    pub timestamp: String,
    pub reading_type: String,
    pub value: f64,
    #[serde(default)]
    pub unit: Option<String>,
}

struct Smoc {
    store: Store,
    device_hub_id: Option<String>,
    jwt: Option<Arc<JwtVerifier>>,
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

/// Writes are accepted from device-hub's identity only (on top of the ACL file).
fn require_device_hub(smoc: &Smoc, req_peer: Option<String>) -> Result<(), Box<Response>> {
    match (&smoc.device_hub_id, req_peer) {
        (Some(expected), Some(peer)) if &peer == expected => Ok(()),
        (_, peer) => {
            let who = peer.unwrap_or_else(|| "<no spiffe id>".into());
            tracing::warn!(peer = %who, "write refused: only device-hub may write");
            Err(Box::new(json_error(
                StatusCode::FORBIDDEN,
                format!("peer {who} not allowed to write: only device-hub may"),
            )))
        }
    }
}

fn valid_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('|')
}

async fn put_device(
    State(smoc): State<Arc<Smoc>>,
    Path(serial): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = require_device_hub(&smoc, peer_of(req.extensions())) {
        return *r;
    }
    if !valid_serial(&serial) {
        return json_error(StatusCode::BAD_REQUEST, "invalid serial");
    }
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    let mut device: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => return json_error(StatusCode::BAD_REQUEST, "device must be a JSON object"),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid device JSON: {e}")),
    };
    if let Some(obj) = device.as_object_mut() {
        obj.insert("serialNumber".into(), serial.clone().into());
        obj.insert("receivedAt".into(), rfc3339(chrono::Utc::now()).into());
    }
    let r = smoc
        .store
        .run(move |s| {
            let existed = s.get_json::<serde_json::Value>(DEVICES, &serial)?.is_some();
            s.put_json(DEVICES, &serial, &device)?;
            Ok((existed, device))
        })
        .await;
    match r {
        Ok((true, d)) => (StatusCode::OK, Json(d)).into_response(),
        Ok((false, d)) => (StatusCode::CREATED, Json(d)).into_response(),
        Err(e) => internal(e),
    }
}

async fn delete_device(
    State(smoc): State<Arc<Smoc>>,
    Path(serial): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = require_device_hub(&smoc, peer_of(req.extensions())) {
        return *r;
    }
    match smoc.store.run(move |s| s.delete(DEVICES, &serial)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn post_reading(State(smoc): State<Arc<Smoc>>, req: Request) -> Response {
    if let Err(r) = require_device_hub(&smoc, peer_of(req.extensions())) {
        return *r;
    }
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    let mut reading: Reading = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid reading JSON: {e}"),
            )
        }
    };
    if !valid_serial(&reading.serial_number)
        || reading.reading_type.is_empty()
        || !reading.value.is_finite()
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "reading needs serialNumber, readingType and a finite value",
        );
    }
    match parse_rfc3339(&reading.timestamp) {
        Ok(t) => reading.timestamp = rfc3339_millis(t),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("timestamp {:?} is not RFC 3339: {e}", reading.timestamp),
            )
        }
    }
    // Idempotent key: a retried delivery overwrites the same entry.
    let key = format!(
        "{}|{}|{}",
        reading.serial_number, reading.timestamp, reading.reading_type
    );
    let r = smoc
        .store
        .run(move |s| s.put_json(READINGS, &key, &reading).map(|_| reading))
        .await;
    match r {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(e) => internal(e),
    }
}

/// Query API guard: a valid bearer token with realm role `reader`.
async fn require_jwt(State(smoc): State<Arc<Smoc>>, req: Request, next: Next) -> Response {
    let Some(verifier) = smoc.jwt.clone() else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "query API disabled: no jwt section in config.json",
        );
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match verifier.verify_header(auth).await {
        Ok(caller) => {
            tracing::debug!(subject = ?caller.subject, "query authorized");
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "query refused");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = json_error(status, e.to_string());
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            resp
        }
    }
}

async fn list_meters(State(smoc): State<Arc<Smoc>>) -> Response {
    match smoc
        .store
        .run(|s| s.list_json::<serde_json::Value>(DEVICES))
        .await
    {
        Ok(items) => Json(serde_json::json!({
            "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn get_meter(State(smoc): State<Arc<Smoc>>, Path(serial): Path<String>) -> Response {
    let key = serial.clone();
    match smoc
        .store
        .run(move |s| s.get_json::<serde_json::Value>(DEVICES, &key))
        .await
    {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("meter {serial} not found")),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn get_readings(
    State(smoc): State<Arc<Smoc>>,
    Path(serial): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    if !valid_serial(&serial) {
        return json_error(StatusCode::BAD_REQUEST, "invalid serial");
    }
    let norm = |v: &Option<String>, name: &str| -> Result<Option<String>, Box<Response>> {
        match v.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_rfc3339(s)
                .map(|t| Some(rfc3339_millis(t)))
                .map_err(|e| {
                    Box::new(json_error(
                        StatusCode::BAD_REQUEST,
                        format!("{name}={s:?} is not RFC 3339: {e}"),
                    ))
                }),
        }
    };
    let (from, to) = match (norm(&q.from, "from"), norm(&q.to, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let start = format!("{serial}|{}", from.unwrap_or_default());
    // '~' sorts after digits, letters and '.', so `to` is inclusive.
    let end = match to {
        Some(t) => format!("{serial}|{t}|~"),
        None => format!("{serial}|~"),
    };
    let r = smoc
        .store
        .run(move |s| s.range_json::<Reading>(READINGS, &start, Some(&end), MAX_READINGS))
        .await;
    match r {
        Ok(items) => Json(serde_json::json!({
            "serialNumber": serial,
            "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

fn router(smoc: Arc<Smoc>) -> Router {
    let query = Router::new()
        .route("/v1/meters", get(list_meters))
        .route("/v1/meters/{serial}", get(get_meter))
        .route("/v1/meters/{serial}/readings", get(get_readings))
        .route_layer(middleware::from_fn_with_state(smoc.clone(), require_jwt));
    Router::new()
        .route(
            "/v1/devices/{serial}",
            put(put_device).delete(delete_device),
        )
        .route("/v1/readings", post(post_reading))
        .merge(query)
        .with_state(smoc)
}

/// Starts smoc-service. A `jwt` section that names no key source, or two, stops it here, before it
/// listens; a key set that cannot be loaded yet keeps it unready (`/readyz`) instead.
pub async fn start(mut ctx: ServiceContext) -> Result<Running, ServerError> {
    let jwt = match &ctx.config.jwt {
        Some(j) => Some(Arc::new(JwtVerifier::from_config(j, ctx.metrics.clone())?)),
        None => None,
    };
    let store = Store::open(&ctx.paths.data_dir, STORE_FILE)?;
    if let Some(jwt) = &jwt {
        ctx.readiness_checks.push(jwt.clone());
    }
    let smoc = Arc::new(Smoc {
        store,
        device_hub_id: ctx
            .config
            .peers
            .get("device-hub")
            .map(|p| p.spiffe_id.clone()),
        jwt: jwt.clone(),
    });
    if smoc.device_hub_id.is_none() {
        tracing::warn!("peers.device-hub missing in config.json: all writes will be refused");
    }
    let mut running = start_common(&ctx, router(smoc)).await?;
    if let Some(jwt) = jwt {
        let sd = ctx.shutdown.clone();
        let interval = ctx.poll_interval;
        running.tasks.spawn(async move {
            jwt.run(interval, sd).await;
            Ok(())
        });
    }
    Ok(running)
}
