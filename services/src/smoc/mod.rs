//! smoc-service (contract: smoc-service API): stores devices and readings written by device-hub,
//! one at a time or in batches, and answers queries authorized by a JWT with realm role `reader`.

pub mod writes;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::jwt::JwtVerifier;
use crate::server::{
    internal_error, json_error, peer_of, start_common, Running, ServerError, ServiceContext,
};
use crate::store::{list_body, ListQuery, Store, WriteOp};
use crate::util::{parse_rfc3339, rfc3339_millis};
use writes::{
    batch_statuses, batch_write, device_write, reading_write, valid_serial, DeviceWrite, Write,
    MAX_BATCH_ITEMS,
};
pub use writes::{Reading, DEVICES, READINGS};

pub const SERVICE: &str = "smoc-service";
pub const STORE_FILE: &str = "smoc-service.redb";
const MAX_READINGS: usize = 10_000;
const MAX_BODY: usize = 1 << 20;
const MAX_BATCH_BODY: usize = 16 << 20;

struct Smoc {
    store: Store,
    device_hub_id: Option<String>,
    jwt: Option<Arc<JwtVerifier>>,
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

/// The JSON body of a write, of at most `limit` bytes, from device-hub's identity only.
async fn device_hub_write(
    smoc: &Smoc,
    req: Request,
    limit: usize,
) -> Result<serde_json::Value, Box<Response>> {
    require_device_hub(smoc, peer_of(req.extensions()))?;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            Box::new(json_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}"),
            ))
        })?;
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON: {e}"),
        ))
    })
}

async fn put_device(
    State(smoc): State<Arc<Smoc>>,
    Path(serial): Path<String>,
    req: Request,
) -> Response {
    let body = match device_hub_write(&smoc, req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let write = match device_write(&serial, body, chrono::Utc::now()) {
        Ok(w) => w,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let r = smoc
        .store
        .run(move |s| {
            let existed = s.get_json::<serde_json::Value>(DEVICES, &serial)?.is_some();
            s.apply(&[write.op()?])?;
            Ok((existed, write.device))
        })
        .await;
    match r {
        Ok((true, device)) => (StatusCode::OK, Json(device)).into_response(),
        Ok((false, device)) => (StatusCode::CREATED, Json(device)).into_response(),
        Err(e) => internal_error(e),
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
        Err(e) => internal_error(e),
    }
}

async fn post_reading(State(smoc): State<Arc<Smoc>>, req: Request) -> Response {
    let body = match device_hub_write(&smoc, req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let write = match reading_write(body) {
        Ok(w) => w,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let r = smoc
        .store
        .run(move |s| s.apply(&[write.op()?]).map(|_| write.reading))
        .await;
    match r {
        Ok(reading) => (StatusCode::CREATED, Json(reading)).into_response(),
        Err(e) => internal_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    items: Vec<serde_json::Value>,
}

/// `POST /v1/batch`: the valid items are stored in one durable transaction, in order, before the
/// answer; each item gets the status its single call would have answered.
async fn post_batch(State(smoc): State<Arc<Smoc>>, req: Request) -> Response {
    let body = match device_hub_write(&smoc, req, MAX_BATCH_BODY).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let items = match serde_json::from_value::<BatchRequest>(body) {
        Ok(b) if b.items.len() <= MAX_BATCH_ITEMS => b.items,
        Ok(b) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "items: {} writes, at most {MAX_BATCH_ITEMS} per batch",
                    b.items.len()
                ),
            )
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")),
    };
    let now = chrono::Utc::now();
    let writes: Vec<Result<Write, String>> =
        items.into_iter().map(|i| batch_write(i, now)).collect();
    let r = smoc
        .store
        .run(move |s| {
            let mut stored = std::collections::HashMap::new();
            for w in &writes {
                if let Ok(Write::PutDevice(DeviceWrite { serial, .. })) = w {
                    if !stored.contains_key(serial) {
                        let exists = s.get_json::<serde_json::Value>(DEVICES, serial)?.is_some();
                        stored.insert(serial.clone(), exists);
                    }
                }
            }
            let statuses = batch_statuses(&writes, |serial| stored.get(serial) == Some(&true));
            let ops = writes
                .iter()
                .flatten()
                .map(Write::op)
                .collect::<Result<Vec<WriteOp>, _>>()?;
            s.apply(&ops)?;
            Ok(statuses)
        })
        .await;
    match r {
        Ok(statuses) => Json(serde_json::json!({
            "results": statuses.into_iter().map(|(status, error)| match error {
                Some(e) => serde_json::json!({"status": status, "error": e}),
                None => serde_json::json!({"status": status}),
            }).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => internal_error(e),
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

async fn list_meters(State(smoc): State<Arc<Smoc>>, Query(q): Query<ListQuery>) -> Response {
    let limit = match q.limit() {
        Ok(l) => l,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let after = q.continue_after;
    match smoc
        .store
        .run(move |s| s.list_page(DEVICES, after.as_deref(), limit))
        .await
    {
        Ok((items, next)) => Json(list_body(items, next)).into_response(),
        Err(e) => internal_error(e),
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
        Err(e) => internal_error(e),
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
        Err(e) => internal_error(e),
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
        .route("/v1/batch", post(post_batch))
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
