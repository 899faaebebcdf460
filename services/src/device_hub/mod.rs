//! device-hub (contract: device-hub API): the meter registry. Persists meters, provisions them to
//! smoc-service and forwards readings through a persisted outbox (never lost, retried in the
//! background).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex, Notify};

use crate::client::{ClientPolicy, MtlsClient};
use crate::config::PeerConfig;
use crate::iec::{EventKind, NormalizedEvent};
use crate::metrics::Metrics;
use crate::server::{
    internal_error, json_error, start_common, RequestTrace, Running, ServerError, ServiceContext,
};
use crate::store::{list_body, queue_key, ListQuery, Store, StoreError, WriteOp};
use crate::util::{rfc3339, uuid_like, TraceContext};

mod outbox;

use outbox::outbox_worker;
pub use outbox::{OutboxItem, OutboxPolicy, PARKED, QUARANTINE};

pub const SERVICE: &str = "device-hub";
pub const STORE_FILE: &str = "device-hub.redb";
pub const METERS: &str = "meters";
pub const OUTBOX: &str = "outbox";
pub const EVENTS: &str = "events";
/// contract: device-hub API, batch "at most 500".
pub const MAX_BATCH: usize = 500;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum DesiredState {
    Active,
    Decommissioned,
}

/// The PUT body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeterSpec {
    pub serial_number: String,
    pub manufacturer: String,
    pub model: String,
    pub protocol: String,
    pub hes_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<serde_json::Value>,
    pub desired_state: DesiredState,
}

/// The stored and returned record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeterRecord {
    pub device_id: String,
    pub serial_number: String,
    pub state: String,
    pub provisioned_at: String,
    pub manufacturer: String,
    pub model: String,
    pub protocol: String,
    pub hes_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<serde_json::Value>,
    pub desired_state: DesiredState,
}

fn valid_serial(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("serialNumber must be 1..128 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "serialNumber {s:?} may only contain letters, digits, '-', '_', '.', ':'"
        ));
    }
    Ok(())
}

impl MeterSpec {
    pub fn validate(&self) -> Result<(), String> {
        valid_serial(&self.serial_number)?;
        for (name, v) in [
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("protocol", &self.protocol),
            ("hesId", &self.hes_id),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        Ok(())
    }

    fn state(&self) -> &'static str {
        match self.desired_state {
            DesiredState::Active => "Provisioned",
            DesiredState::Decommissioned => "Decommissioned",
        }
    }
}

/// Parses a PUT body, naming what is wrong.
pub fn parse_spec(body: &[u8]) -> Result<MeterSpec, String> {
    let spec: MeterSpec =
        serde_json::from_slice(body).map_err(|e| format!("invalid meter JSON: {e}"))?;
    spec.validate()?;
    Ok(spec)
}

struct Hub {
    store: Store,
    client: Arc<MtlsClient>,
    smoc: Option<PeerConfig>,
    write_lock: Mutex<()>,
    outbox_notify: Notify,
    outbox_policy: OutboxPolicy,
    event_retention: EventRetention,
    metrics: Arc<Metrics>,
}

fn outbox_put(spec: &MeterRecord, trace: &TraceContext) -> Result<WriteOp, StoreError> {
    let item = OutboxItem {
        method: "PUT".into(),
        path: format!("/v1/devices/{}", spec.serial_number),
        body: Some(serde_json::to_value(spec).map_err(StoreError::Encode)?),
        traceparent: trace.header_value(),
        attempts: 0,
        enqueued_at: rfc3339(chrono::Utc::now()),
    };
    WriteOp::enqueue_json(OUTBOX, &item)
}

/// What a `PUT` of `spec` does to the stored record `existing`: the answer's status (201 for a new
/// meter, 200 otherwise), the record, and whether anything has to be written (an identical `PUT`
/// writes nothing and queues nothing for smoc-service).
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub status: u16,
    pub record: MeterRecord,
    pub changed: bool,
}

/// Decides an upsert without touching the store; `device_id` and `provisioned_at` are used only for
/// a new meter (an existing one keeps its own).
pub fn plan_upsert(
    existing: Option<&MeterRecord>,
    spec: MeterSpec,
    device_id: impl FnOnce() -> String,
    now: impl FnOnce() -> String,
) -> Upsert {
    let state = spec.state().to_string();
    match existing {
        Some(old) => {
            let record = MeterRecord {
                device_id: old.device_id.clone(),
                serial_number: old.serial_number.clone(),
                state,
                provisioned_at: old.provisioned_at.clone(),
                manufacturer: spec.manufacturer,
                model: spec.model,
                protocol: spec.protocol,
                hes_id: spec.hes_id,
                location: spec.location,
                desired_state: spec.desired_state,
            };
            let changed = &record != old;
            Upsert {
                status: 200,
                record,
                changed,
            }
        }
        None => Upsert {
            status: 201,
            record: MeterRecord {
                device_id: device_id(),
                state,
                serial_number: spec.serial_number,
                provisioned_at: now(),
                manufacturer: spec.manufacturer,
                model: spec.model,
                protocol: spec.protocol,
                hes_id: spec.hes_id,
                location: spec.location,
                desired_state: spec.desired_state,
            },
            changed: true,
        },
    }
}

fn plan_new(existing: Option<&MeterRecord>, spec: MeterSpec) -> Upsert {
    plan_upsert(
        existing,
        spec,
        || format!("dev-{}", uuid_like()),
        || rfc3339(chrono::Utc::now()),
    )
}

/// The writes of a changed record: the record and its delivery to smoc-service, together.
fn upsert_ops(
    record: &MeterRecord,
    trace: &TraceContext,
    ops: &mut Vec<WriteOp>,
) -> Result<(), StoreError> {
    ops.push(WriteOp::put_json(METERS, &record.serial_number, record)?);
    ops.push(outbox_put(record, trace)?);
    Ok(())
}

/// Creates or updates one meter in its own durable transaction.
fn upsert(
    store: &Store,
    spec: MeterSpec,
    trace: &TraceContext,
) -> Result<(u16, MeterRecord), StoreError> {
    let existing: Option<MeterRecord> = store.get_json(METERS, &spec.serial_number)?;
    let plan = plan_new(existing.as_ref(), spec);
    if plan.changed {
        let mut ops = Vec::with_capacity(2);
        upsert_ops(&plan.record, trace, &mut ops)?;
        store.apply(&ops)?;
    }
    Ok((plan.status, plan.record))
}

/// One item of a batch: the parsed spec, or why it was refused.
type BatchItem = (Option<String>, Result<MeterSpec, String>);

/// Upserts a whole batch in one durable transaction (one disk sync for up to [`MAX_BATCH`] meters,
/// not one per meter); answers only after the commit. A serial repeated in the batch sees the
/// earlier item's record, as it would with one `PUT` after another.
fn upsert_batch(
    store: &Store,
    items: Vec<BatchItem>,
    trace: &TraceContext,
) -> Result<Vec<BatchResult>, StoreError> {
    let mut staged: std::collections::HashMap<String, MeterRecord> = Default::default();
    let mut ops = Vec::new();
    let mut results = Vec::with_capacity(items.len());
    for (serial, spec) in items {
        let spec = match spec {
            Ok(spec) => spec,
            Err(error) => {
                results.push(BatchResult {
                    serial_number: serial,
                    status: 400,
                    meter: None,
                    error: Some(error),
                });
                continue;
            }
        };
        let stored = match staged.get(&spec.serial_number) {
            Some(record) => Some(record.clone()),
            None => store.get_json(METERS, &spec.serial_number)?,
        };
        let plan = plan_new(stored.as_ref(), spec);
        if plan.changed {
            upsert_ops(&plan.record, trace, &mut ops)?;
            staged.insert(plan.record.serial_number.clone(), plan.record.clone());
        }
        results.push(BatchResult {
            serial_number: serial,
            status: plan.status,
            meter: Some(plan.record),
            error: None,
        });
    }
    if !ops.is_empty() {
        store.apply(&ops)?;
    }
    Ok(results)
}

async fn put_meter(
    State(hub): State<Arc<Hub>>,
    Path(serial): Path<String>,
    Extension(trace): Extension<RequestTrace>,
    body: Bytes,
) -> Response {
    let spec = match parse_spec(&body) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    if spec.serial_number != serial {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "serialNumber {:?} does not match the path serial {serial:?}",
                spec.serial_number
            ),
        );
    }
    let _guard = hub.write_lock.lock().await;
    let tc = trace.0.clone();
    match hub.store.run(move |s| upsert(s, spec, &tc)).await {
        Ok((status, record)) => {
            hub.outbox_notify.notify_one();
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (code, Json(record)).into_response()
        }
        Err(e) => internal_error(e),
    }
}

async fn get_meter(State(hub): State<Arc<Hub>>, Path(serial): Path<String>) -> Response {
    let key = serial.clone();
    match hub
        .store
        .run(move |s| s.get_json::<MeterRecord>(METERS, &key))
        .await
    {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("meter {serial} not found")),
        Err(e) => internal_error(e),
    }
}

/// The writes that delete `serial`: the record and an outbox item telling smoc-service; none when
/// it is not stored (a `DELETE` is idempotent). `gone` holds the serials an earlier item of the same
/// transaction deletes.
fn delete_ops(
    store: &Store,
    serial: &str,
    traceparent: &str,
    gone: &mut std::collections::HashSet<String>,
    ops: &mut Vec<WriteOp>,
) -> Result<(), StoreError> {
    if gone.contains(serial) || store.get_json::<MeterRecord>(METERS, serial)?.is_none() {
        return Ok(());
    }
    let item = OutboxItem {
        method: "DELETE".into(),
        path: format!("/v1/devices/{serial}"),
        body: None,
        traceparent: traceparent.to_string(),
        attempts: 0,
        enqueued_at: rfc3339(chrono::Utc::now()),
    };
    ops.push(WriteOp::delete(METERS, serial));
    ops.push(WriteOp::enqueue_json(OUTBOX, &item)?);
    gone.insert(serial.to_string());
    Ok(())
}

async fn delete_meter(
    State(hub): State<Arc<Hub>>,
    Path(serial): Path<String>,
    Extension(trace): Extension<RequestTrace>,
) -> Response {
    if let Err(e) = valid_serial(&serial) {
        return json_error(StatusCode::BAD_REQUEST, e);
    }
    let _guard = hub.write_lock.lock().await;
    let tp = trace.0.header_value();
    let r = hub
        .store
        .run(move |s| {
            let mut ops = Vec::new();
            delete_ops(s, &serial, &tp, &mut Default::default(), &mut ops)?;
            if !ops.is_empty() {
                s.apply(&ops)?;
            }
            Ok(!ops.is_empty())
        })
        .await;
    match r {
        Ok(enqueued) => {
            if enqueued {
                hub.outbox_notify.notify_one();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => internal_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchDeleteBody {
    serial_numbers: Vec<String>,
}

/// Deletes a whole batch in one durable transaction; answers only after the commit. One result
/// per serial, in order: `204` (deleted or absent) or `400` (not a valid serial).
fn delete_batch(
    store: &Store,
    serials: Vec<String>,
    traceparent: &str,
) -> Result<(Vec<BatchResult>, bool), StoreError> {
    let mut gone = Default::default();
    let mut ops = Vec::new();
    let mut results = Vec::with_capacity(serials.len());
    for serial in serials {
        let (status, error) = match valid_serial(&serial) {
            Ok(()) => {
                delete_ops(store, &serial, traceparent, &mut gone, &mut ops)?;
                (204, None)
            }
            Err(e) => (400, Some(e)),
        };
        results.push(BatchResult {
            serial_number: Some(serial),
            status,
            meter: None,
            error,
        });
    }
    if !ops.is_empty() {
        store.apply(&ops)?;
    }
    Ok((results, !ops.is_empty()))
}

/// A batch body of the given `shape`, or why it is refused (`400`): a body that is not one, or that
/// holds more than [`MAX_BATCH`] `entries` (counted by `len`).
fn parse_batch<B: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
    entries: &str,
    len: impl Fn(&B) -> usize,
) -> Result<B, String> {
    let parsed: B = serde_json::from_slice(body)
        .map_err(|e| format!("invalid batch JSON (expected {shape}): {e}"))?;
    let n = len(&parsed);
    if n > MAX_BATCH {
        return Err(format!("batch has {n} {entries}; at most {MAX_BATCH}"));
    }
    Ok(parsed)
}

async fn batch_delete(
    State(hub): State<Arc<Hub>>,
    Extension(trace): Extension<RequestTrace>,
    body: Bytes,
) -> Response {
    let parsed = match parse_batch::<BatchDeleteBody>(
        &body,
        r#"{"serialNumbers": [...]}"#,
        "serial numbers",
        |b| b.serial_numbers.len(),
    ) {
        Ok(b) => b,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    let _guard = hub.write_lock.lock().await;
    let tp = trace.0.header_value();
    let serials = parsed.serial_numbers;
    match hub.store.run(move |s| delete_batch(s, serials, &tp)).await {
        Ok((results, enqueued)) => {
            if enqueued {
                hub.outbox_notify.notify_one();
            }
            Json(serde_json::json!({ "results": results })).into_response()
        }
        Err(e) => internal_error(e),
    }
}

async fn list_meters(State(hub): State<Arc<Hub>>, Query(q): Query<ListQuery>) -> Response {
    let limit = match q.limit() {
        Ok(l) => l,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let after = q.continue_after;
    match hub
        .store
        .run(move |s| s.list_page(METERS, after.as_deref(), limit))
        .await
    {
        Ok((items, next)) => Json(list_body(items, next)).into_response(),
        Err(e) => internal_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    items: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchResult {
    serial_number: Option<String>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    meter: Option<MeterRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn batch(
    State(hub): State<Arc<Hub>>,
    Extension(trace): Extension<RequestTrace>,
    body: Bytes,
) -> Response {
    let parsed =
        match parse_batch::<BatchBody>(&body, r#"{"items": [...]}"#, "items", |b| b.items.len()) {
            Ok(b) => b,
            Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
        };
    let _guard = hub.write_lock.lock().await;
    let tc = trace.0.clone();
    let items: Vec<BatchItem> = parsed
        .items
        .into_iter()
        .map(|item| {
            let serial = item
                .get("serialNumber")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let spec = serde_json::from_value::<MeterSpec>(item)
                .map_err(|e| format!("invalid meter JSON: {e}"))
                .and_then(|s| s.validate().map(|_| s));
            (serial, spec)
        })
        .collect();
    let r = hub.store.run(move |s| upsert_batch(s, items, &tc)).await;
    match r {
        Ok(results) => {
            hub.outbox_notify.notify_one();
            Json(serde_json::json!({ "results": results })).into_response()
        }
        Err(e) => internal_error(e),
    }
}

/// The insertion-ordered index of [`EVENTS`] that retention prunes by.
pub const EVENTS_INDEX: &str = "events_index";

/// One entry of [`EVENTS_INDEX`]: which event, stored when.
#[derive(Debug, Serialize, Deserialize)]
struct EventIndexEntry {
    key: String,
    at: i64,
}

/// How many events device-hub keeps, and for how long (the oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    pub max_events: u64,
    pub max_age: std::time::Duration,
}

impl Default for EventRetention {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_age: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Events removed per transaction while pruning.
const PRUNE_BATCH: usize = 1000;
/// How often the retention task prunes.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The writes that store one event: the event and its entry in [`EVENTS_INDEX`].
fn event_ops(
    ev: &NormalizedEvent,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<WriteOp>, StoreError> {
    let key = format!("{}|{}|{}", ev.serial_number, ev.timestamp, queue_key());
    let entry = EventIndexEntry {
        key: key.clone(),
        at: now.timestamp(),
    };
    Ok(vec![
        WriteOp::put_json(EVENTS, &key, ev)?,
        WriteOp::enqueue_json(EVENTS_INDEX, &entry)?,
    ])
}

/// Removes the oldest events beyond `retention` (by count and by age), in transactions of at
/// most [`PRUNE_BATCH`]; returns how many went.
pub fn prune_events(
    store: &Store,
    retention: &EventRetention,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, StoreError> {
    let oldest_kept =
        now.timestamp() - i64::try_from(retention.max_age.as_secs()).unwrap_or(i64::MAX);
    let mut removed = 0;
    loop {
        let excess = store.count(EVENTS)?.saturating_sub(retention.max_events);
        let page = store.page_raw(EVENTS_INDEX, None, PRUNE_BATCH)?;
        let mut ops = Vec::new();
        let mut events = 0usize;
        for (index_key, bytes) in &page {
            let entry = serde_json::from_slice::<EventIndexEntry>(bytes).ok();
            let expired = entry.as_ref().is_none_or(|e| e.at < oldest_kept);
            if (events as u64) >= excess && !expired {
                break;
            }
            ops.push(WriteOp::delete(EVENTS_INDEX, index_key));
            if let Some(e) = entry {
                ops.push(WriteOp::delete(EVENTS, &e.key));
                events += 1;
            }
        }
        if ops.is_empty() {
            return Ok(removed);
        }
        store.apply(&ops)?;
        removed += events;
    }
}

/// Prunes events every [`PRUNE_EVERY`] until `shutdown` flips.
async fn retention_worker(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let retention = hub.event_retention;
    loop {
        match hub
            .store
            .run(move |s| prune_events(s, &retention, chrono::Utc::now()))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old events"),
            Err(e) => tracing::error!(error = %e, "cannot prune events"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {},
            _ = shutdown.changed() => return,
        }
    }
}

async fn post_event(
    State(hub): State<Arc<Hub>>,
    Extension(trace): Extension<RequestTrace>,
    body: Bytes,
) -> Response {
    let ev: NormalizedEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid event JSON: {e}")),
    };
    if let Err(e) = ev.validate() {
        return json_error(StatusCode::BAD_REQUEST, format!("invalid event: {e}"));
    }
    let tp = trace.0.header_value();
    let r = hub
        .store
        .run(move |s| {
            let mut ops = event_ops(&ev, chrono::Utc::now())?;
            if ev.kind == EventKind::Reading {
                let item = OutboxItem {
                    method: "POST".into(),
                    path: "/v1/readings".into(),
                    body: Some(serde_json::json!({
                        "serialNumber": ev.serial_number,
                        "timestamp": ev.timestamp,
                        "readingType": ev.reading_type,
                        "value": ev.value,
                        "unit": ev.unit,
                    })),
                    traceparent: tp,
                    attempts: 0,
                    enqueued_at: rfc3339(chrono::Utc::now()),
                };
                ops.push(WriteOp::enqueue_json(OUTBOX, &item)?);
            }
            s.apply(&ops)
        })
        .await;
    match r {
        Ok(()) => {
            hub.outbox_notify.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({"accepted": true})),
            )
                .into_response()
        }
        Err(e) => internal_error(e),
    }
}

/// The HTTPS API router (ACL and tracing are added by the server).
fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/v1/meters", get(list_meters))
        .route("/v1/meters:batch", post(batch))
        .route("/v1/meters:batchDelete", post(batch_delete))
        .route(
            "/v1/meters/{serial}",
            put(put_meter).get(get_meter).delete(delete_meter),
        )
        .route("/v1/events", post(post_event))
        .with_state(hub)
}

/// device-hub's store and HTTPS API, without listeners. [`start`] serves it the way the binary
/// does; benchmarks serve the same router over other transports (`mpm-bench tls`).
pub struct App {
    hub: Arc<Hub>,
}

impl App {
    /// Opens the store in `ctx.paths.data_dir` and prepares the client for smoc-service.
    pub fn open(ctx: &ServiceContext) -> Result<Self, ServerError> {
        let store = Store::open(&ctx.paths.data_dir, STORE_FILE)?;
        let client = Arc::new(MtlsClient::new(
            ctx.material.clone(),
            ctx.metrics.clone(),
            ClientPolicy::default(),
        ));
        Ok(Self {
            hub: Arc::new(Hub {
                store,
                client,
                smoc: ctx.config.peers.get("smoc-service").cloned(),
                write_lock: Mutex::new(()),
                outbox_notify: Notify::new(),
                outbox_policy: OutboxPolicy::default(),
                event_retention: EventRetention::default(),
                metrics: ctx.metrics.clone(),
            }),
        })
    }

    /// The API router (contract: device-hub API). It carries no ACL or tracing: wrap it with
    /// [`crate::server::secure_app`] as [`start`] does.
    pub fn router(&self) -> Router {
        router(self.hub.clone())
    }

    /// Delivers the outbox to smoc-service until `shutdown` flips.
    pub async fn run_outbox(&self, shutdown: watch::Receiver<bool>) {
        outbox_worker(self.hub.clone(), shutdown).await
    }
}

/// Starts device-hub: store, HTTPS API, health port, outbox worker.
pub async fn start(ctx: ServiceContext) -> Result<Running, ServerError> {
    let app = App::open(&ctx)?;
    let mut running = start_common(&ctx, app.router()).await?;
    let sd = ctx.shutdown.clone();
    let (hub, sd2) = (app.hub.clone(), ctx.shutdown.clone());
    running.tasks.spawn(async move {
        retention_worker(hub, sd2).await;
        Ok(())
    });
    running.tasks.spawn(async move {
        app.run_outbox(sd).await;
        Ok(())
    });
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(serial: &str, model: &str) -> MeterSpec {
        MeterSpec {
            serial_number: serial.into(),
            manufacturer: "Landis+Gyr".into(),
            model: model.into(),
            protocol: "DLMS/COSEM".into(),
            hes_id: "hes-1".into(),
            location: None,
            desired_state: DesiredState::Active,
        }
    }

    #[test]
    fn plan_keeps_identity_and_skips_identical_puts() {
        let new = plan_upsert(None, spec("S1", "E450"), || "dev-1".into(), || "t0".into());
        assert_eq!((new.status, new.changed), (201, true));
        assert_eq!(new.record.device_id, "dev-1");

        let same = plan_upsert(
            Some(&new.record),
            spec("S1", "E450"),
            || unreachable!(),
            || unreachable!(),
        );
        assert_eq!((same.status, same.changed), (200, false));

        let mut decommission = spec("S1", "E360");
        decommission.desired_state = DesiredState::Decommissioned;
        let changed = plan_upsert(
            Some(&new.record),
            decommission,
            || unreachable!(),
            || "t1".into(),
        );
        assert_eq!((changed.status, changed.changed), (200, true));
        assert_eq!(changed.record.device_id, "dev-1");
        assert_eq!(changed.record.provisioned_at, "t0");
        assert_eq!(changed.record.state, "Decommissioned");
        assert_eq!(changed.record.model, "E360");
    }

    /// Attack: events were stored forever, growing the volume without bound. The oldest now go
    /// beyond the count limit, and any older than the age limit.
    #[test]
    fn events_beyond_the_retention_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "t.redb").expect("open");
        let now = chrono::Utc::now();
        let event = |i: usize| -> NormalizedEvent {
            serde_json::from_value(serde_json::json!({"kind": "reading",
                "serialNumber": format!("M-{}", i % 7), "timestamp": "2026-11-22T10:00:00Z",
                "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": i as f64, "unit": "kWh"}))
            .expect("event")
        };
        // 5 events from 10 days ago, then 2 500 recent ones.
        let mut ops = Vec::new();
        for i in 0..2505 {
            let at = if i < 5 {
                now - chrono::Duration::days(10)
            } else {
                now
            };
            ops.extend(event_ops(&event(i), at).expect("ops"));
        }
        store.apply(&ops).expect("store");
        let retention = EventRetention {
            max_events: 3000,
            max_age: std::time::Duration::from_secs(7 * 24 * 3600),
        };
        assert_eq!(prune_events(&store, &retention, now).expect("prune"), 5);
        assert_eq!(store.count(EVENTS).expect("count"), 2500);
        let retention = EventRetention {
            max_events: 1000,
            ..retention
        };
        assert_eq!(prune_events(&store, &retention, now).expect("prune"), 1500);
        assert_eq!(store.count(EVENTS).expect("count"), 1000);
        assert_eq!(store.count(EVENTS_INDEX).expect("count"), 1000);
        // The newest stay.
        let values: Vec<f64> = store
            .list_json::<NormalizedEvent>(EVENTS)
            .expect("events")
            .into_iter()
            .filter_map(|(_, e)| e.value)
            .collect();
        assert!(values.iter().all(|v| *v >= 1505.0), "{values:?}");
        assert_eq!(prune_events(&store, &retention, now).expect("prune"), 0);
    }

    /// Attack on the order: the PUT of a meter was queued while the clock ran an hour ahead; the
    /// clock then stepped back and the DELETE was queued. Time-based keys delivered the DELETE
    /// first (and the PUT then resurrected the meter in smoc-service).
    #[test]
    fn a_clock_step_back_keeps_the_delete_after_its_put() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "t.redb").expect("open");
        let trace = TraceContext::from_header_or_new(None);
        let record = plan_new(None, spec("S1", "E450")).record;
        store.put_json(METERS, "S1", &record).expect("meter stored");
        let ahead = chrono::Utc::now() + chrono::Duration::hours(1);
        let put_key = format!(
            "{:020}-{:06}",
            ahead.timestamp_nanos_opt().expect("nanos"),
            0
        );
        let put = outbox_put(&record, &trace)
            .expect("item")
            .value
            .expect("bytes");
        store
            .write_batch(OUTBOX, &[(put_key, put)], &[])
            .expect("queued under the clock ahead");
        let mut ops = Vec::new();
        delete_ops(
            &store,
            "S1",
            &trace.header_value(),
            &mut Default::default(),
            &mut ops,
        )
        .expect("ops");
        store.apply(&ops).expect("delete");
        let methods: Vec<String> = store
            .list_json::<OutboxItem>(OUTBOX)
            .expect("outbox")
            .into_iter()
            .map(|(_, i)| i.method)
            .collect();
        assert_eq!(methods, vec!["PUT".to_string(), "DELETE".to_string()]);
    }

    #[test]
    fn a_delete_batch_deletes_once_and_answers_every_serial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "t.redb").expect("open");
        let trace = TraceContext::from_header_or_new(None);
        for serial in ["S0", "S1"] {
            upsert(&store, spec(serial, "E450"), &trace).expect("put");
        }
        let queued = store.count(OUTBOX).expect("count");

        let serials = ["S0", "absent", "bad serial", "S0", "S1"].map(String::from);
        let (results, enqueued) =
            delete_batch(&store, serials.to_vec(), &trace.header_value()).expect("batch");
        let answers: Vec<(Option<&str>, u16)> = results
            .iter()
            .map(|r| (r.serial_number.as_deref(), r.status))
            .collect();
        assert_eq!(
            answers,
            vec![
                (Some("S0"), 204),
                (Some("absent"), 204),
                (Some("bad serial"), 400),
                (Some("S0"), 204),
                (Some("S1"), 204),
            ]
        );
        assert!(results[2]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("may only contain")));
        assert!(enqueued);
        assert_eq!(store.count(METERS).expect("count"), 0);
        // One DELETE for smoc-service per stored meter: the repeated S0 and the absent serial
        // queue nothing.
        assert_eq!(store.count(OUTBOX).expect("count"), queued + 2);

        let (_, enqueued) =
            delete_batch(&store, serials.to_vec(), &trace.header_value()).expect("again");
        assert!(!enqueued, "deleting again writes nothing");
    }

    #[test]
    fn a_batch_sees_its_own_items_and_skips_identical_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "t.redb").expect("open");
        let trace = TraceContext::from_header_or_new(None);
        let (_, first) = upsert(&store, spec("S0", "E450"), &trace).expect("single put");

        let items: Vec<BatchItem> = vec![
            (Some("S0".into()), Ok(spec("S0", "E450"))),
            (Some("S1".into()), Ok(spec("S1", "E450"))),
            (
                Some("bad".into()),
                Err("manufacturer must not be empty".into()),
            ),
            (Some("S1".into()), Ok(spec("S1", "E360"))),
        ];
        let results = upsert_batch(&store, items, &trace).expect("batch");
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![200, 201, 400, 200]);
        assert_eq!(
            results[0].meter.as_ref().map(|m| &m.device_id),
            Some(&first.device_id)
        );
        // The repeated serial updated the record the batch itself created.
        let created = results[1].meter.clone().expect("record");
        let updated = results[3].meter.clone().expect("record");
        assert_eq!(updated.device_id, created.device_id);
        assert_eq!(updated.model, "E360");
        assert_eq!(
            results[2].error.as_deref(),
            Some("manufacturer must not be empty")
        );

        let stored: MeterRecord = store.get_json(METERS, "S1").expect("get").expect("stored");
        assert_eq!(stored, updated);
        // S0 once (single PUT; the identical batch item queues nothing), S1 twice.
        assert_eq!(store.count(OUTBOX).expect("count"), 3);
    }
}
