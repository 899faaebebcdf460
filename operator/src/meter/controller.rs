//! The Meter controller: gathers the inputs of the state machine (`state.rs`), makes the device-hub
//! call it asks for (`hub_client.rs`), writes the status when it changed, and deprovisions through
//! the `meterpark.io/deprovision` finalizer.
//!
//! What is cached: the Meters (the controller's reflector, used for the duplicate-serial check and
//! to find the Meters of a hub), the DeviceHubs (a small reflector), and per Meter a few bytes
//! remembering the last confirmed `PUT`. Secrets and ConfigMaps are read, not watched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::hub_client::{
    ClientSettings, HubClients, HubError, HubTarget, MeterPayload, DEVICE_HUB,
};
use super::index::SerialIndex;
use super::namespaces::TerminatingNamespaces;
use super::state::{self, backoff, reason, HubCheck, HubResponse, Input, Requeue, Transition};
use crate::controller::Context;
use crate::crd::condition::{find, ConditionStatus};
use crate::crd::device_hub::DeviceHub;
use crate::crd::meter::{Meter, MeterPhase, MeterStatus};
use crate::resources::hub::resolve_services;
use crate::runtime::cache_ready::wait_ready;
use crate::runtime::metrics::{ErrorLabels, KindLabels};

/// Finalizer that deprovisions the meter in device-hub before the Meter goes away.
pub const FINALIZER: &str = "meterpark.io/deprovision";
pub const KIND: &str = "Meter";
/// Meter reconciles mostly wait on device-hub batches; they run this many times the per-kind
/// concurrency so that batches fill (API writes stay bounded by the shared limiter, device-hub calls
/// by the per-hub semaphore).
pub const CONCURRENCY_FACTOR: u16 = 16;
/// Upper bound of concurrent Meter reconciles.
pub const MAX_CONCURRENCY: u16 = 512;
/// How long a reconcile waits for the first list of DeviceHubs.
const HUB_CACHE_WAIT: Duration = Duration::from_secs(30);

/// Errors of a Meter reconcile, with what an SRE needs to act.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("Meter object has no namespace or name")]
    MissingMetadata,
    #[error("writing the status of Meter {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading DeviceHub {namespace}/{name}: {source}")]
    HubRead {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "deprovisioning serial {serial} of Meter {namespace}/{name} in device-hub failed: {source}; the Meter keeps \
         its finalizer {FINALIZER} and is retried (remove the finalizer by hand to delete it without deprovisioning)"
    )]
    Deprovision {
        namespace: String,
        name: String,
        serial: String,
        #[source]
        source: HubError,
    },
    #[error(
        "cannot deprovision Meter {namespace}/{name}: DeviceHub {hub} has an invalid spec ({message}); fix the hub or \
         remove the finalizer {FINALIZER} by hand"
    )]
    HubSpec {
        namespace: String,
        name: String,
        hub: String,
        message: String,
    },
    #[error("finalizer {FINALIZER} of Meter {namespace}/{name}: {message}")]
    Finalizer {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "the Meter controller's DeviceHub cache is not synced after {0:?}; check that the operator may list and \
         watch devicehubs.meterpark.io (RBAC) and that the API server answers"
    )]
    HubCacheNotReady(Duration),
}

impl MeterError {
    /// Machine-readable reason, for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            MeterError::MissingMetadata => "MissingMetadata",
            MeterError::Status { .. } => "StatusFailed",
            MeterError::HubRead { .. } => "GetFailed",
            MeterError::Deprovision { .. } => "DeprovisionFailed",
            MeterError::HubSpec { .. } => "HubInvalid",
            MeterError::Finalizer { .. } => "FinalizerFailed",
            MeterError::HubCacheNotReady(_) => "HubCacheNotReady",
        }
    }
}

/// Readiness of each hub as last seen, and an epoch that grows each time a hub becomes usable.
/// A `PUT` confirmed in an older epoch is re-asserted (device-hub may have lost data meanwhile).
#[derive(Debug, Default)]
pub struct HubEpochs {
    inner: Mutex<HashMap<(String, String), (bool, u64)>>,
}

impl HubEpochs {
    /// Records whether a hub is usable now; true when it just turned usable after being seen unusable.
    pub fn observe(&self, namespace: &str, hub: &str, usable: bool) -> bool {
        let Ok(mut map) = self.inner.lock() else {
            return false;
        };
        let entry = map
            .entry((namespace.to_string(), hub.to_string()))
            .or_insert((usable, 0));
        let became_usable = usable && !entry.0;
        if became_usable {
            entry.1 = entry.1.wrapping_add(1);
        }
        entry.0 = usable;
        became_usable
    }

    /// Whether the hub was usable when last seen by the watch.
    pub fn usable(&self, namespace: &str, hub: &str) -> bool {
        self.inner
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&(namespace.to_string(), hub.to_string()))
                    .map(|e| e.0)
            })
            .unwrap_or(false)
    }

    /// The current epoch of a hub (0 before its first transition).
    pub fn epoch(&self, namespace: &str, hub: &str) -> u64 {
        self.inner
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&(namespace.to_string(), hub.to_string()))
                    .map(|e| e.1)
            })
            .unwrap_or(0)
    }
}

/// A deleted hub arrives as the last state it had; marking it as being deleted lets `hub_check`
/// see it as gone (the reflector has already dropped it from the cache).
fn mark_deleted(event: watcher::Event<DeviceHub>) -> watcher::Event<DeviceHub> {
    match event {
        watcher::Event::Delete(mut hub) => {
            hub.meta_mut().deletion_timestamp.get_or_insert_with(|| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )
            });
            watcher::Event::Delete(hub)
        }
        other => other,
    }
}

/// Whether a hub event wakes the hub's Meters: when the hub becomes usable (Meters waiting for
/// it, or to re-assert after device-hub lost data) and when it is gone. Not when it merely turns
/// not ready: Meters find that out when they next need device-hub, without 10,000 status writes.
pub fn wakes_meters(became_usable: bool, check: &HubCheck) -> bool {
    became_usable || matches!(check, HubCheck::NotFound { .. })
}

/// Where a hub's device-hub is: `Ok(None)` when the hub does not run device-hub.
pub fn hub_target(hub: &DeviceHub) -> Result<Option<HubTarget>, String> {
    let name = hub.name_any();
    let services =
        resolve_services(&name, &hub.spec).map_err(|e| crate::resources::hub::describe(&e))?;
    Ok(services
        .iter()
        .find(|s| s.name == DEVICE_HUB)
        .map(|s| HubTarget {
            namespace: hub.namespace().unwrap_or_default(),
            hub: name.clone(),
            trust_domain: hub.spec.trust_domain.clone(),
            port: s.port,
        }))
}

/// Whether (and where) a hub can serve the device-hub API, from its spec and status.
pub fn hub_check(
    hub: Option<&DeviceHub>,
    namespace: &str,
    name: &str,
) -> (HubCheck, Option<HubTarget>) {
    let Some(hub) = hub else {
        return (
            HubCheck::NotFound {
                message: format!("DeviceHub {name:?} not found in namespace {namespace}"),
            },
            None,
        );
    };
    if hub.meta().deletion_timestamp.is_some() {
        return (
            HubCheck::NotFound {
                message: format!("DeviceHub {namespace}/{name} is being deleted"),
            },
            None,
        );
    }
    let target = match hub_target(hub) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (
                HubCheck::NotReady {
                    message: format!(
                    "DeviceHub {namespace}/{name} does not run {DEVICE_HUB} (disabled in its spec)"
                ),
                },
                None,
            )
        }
        Err(message) => {
            return (
                HubCheck::NotReady {
                    message: format!("DeviceHub {namespace}/{name} has an invalid spec: {message}"),
                },
                None,
            )
        }
    };
    let status = hub.status.clone().unwrap_or_default();
    let not_ready = |why: String| HubCheck::NotReady {
        message: format!("DeviceHub {namespace}/{name} is not ready: {why}"),
    };
    let check = match find(&status.conditions, "Ready") {
        Some(c) if c.status == ConditionStatus::True => {
            match status.services.iter().find(|s| s.name == DEVICE_HUB) {
                Some(s) if s.desired_replicas < 1 => {
                    not_ready(format!("{DEVICE_HUB} is scaled to 0 replicas"))
                }
                Some(s) if s.ready_replicas < 1 => {
                    not_ready(format!("{DEVICE_HUB} has no ready replica"))
                }
                _ => HubCheck::Ready,
            }
        }
        Some(c) => not_ready(format!(
            "Ready={:?} ({}: {})",
            c.status, c.reason, c.message
        )),
        None => not_ready("no Ready condition yet".into()),
    };
    (check, Some(target))
}

/// `a` was created before `b` (creation time, then name) — the earlier one keeps a shared serial.
pub fn is_earlier(a: &Meter, b: &Meter) -> bool {
    let key = |m: &Meter| {
        let ts = m.meta().creation_timestamp.as_ref().map(|t| t.0);
        (ts.is_none(), ts, m.name_any())
    };
    key(a) < key(b)
}

/// Same namespace, same hub, same serial, different object.
pub fn same_serial(a: &Meter, b: &Meter) -> bool {
    a.spec.serial_number == b.spec.serial_number
        && a.spec.hub_ref.name == b.spec.hub_ref.name
        && a.metadata.namespace == b.metadata.namespace
        && a.metadata.uid != b.metadata.uid
}

/// The cached Meters the index names as holders of `serial` in the Meter's hub.
fn holders(
    store: &Store<Meter>,
    serials: &SerialIndex,
    meter: &Meter,
    serial: &str,
) -> Vec<Arc<Meter>> {
    let namespace = meter.metadata.namespace.as_deref().unwrap_or_default();
    serials
        .holders(namespace, &meter.spec.hub_ref.name, serial)
        .iter()
        .filter_map(|r| store.get(r))
        .collect()
}

/// Name of the earliest Meter holding the same hub and serial before this one (also while it is
/// being deleted: its finalizer may still deprovision the serial).
pub fn earlier_duplicate(
    store: &Store<Meter>,
    serials: &SerialIndex,
    meter: &Meter,
) -> Option<String> {
    holders(store, serials, meter, &meter.spec.serial_number)
        .into_iter()
        .filter(|m| same_serial(m, meter) && is_earlier(m, meter))
        .min_by(|a, b| {
            if is_earlier(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        })
        .map(|m| m.name_any())
}

/// The hub a deleted Meter has to be deprovisioned from, or why it is let go without a `DELETE`:
/// its hub is gone or being deleted, or its namespace is being deleted (the hub goes with it, and
/// the TLS material for the call is deleted first).
pub fn release_without_deprovision(
    namespace_terminating: bool,
    hub: Option<Arc<DeviceHub>>,
) -> Result<Arc<DeviceHub>, &'static str> {
    if namespace_terminating {
        return Err("namespace is being deleted, and its hub with it");
    }
    match hub {
        Some(hub) if hub.meta().deletion_timestamp.is_none() => Ok(hub),
        Some(_) => Err("hub is being deleted"),
        None => Err("hub is gone"),
    }
}

/// The status as a merge patch: absent optional fields become `null` so that they are removed.
pub fn status_patch(status: &MeterStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for key in [
            "observedGeneration",
            "deviceId",
            "provisionedSerialNumber",
            "provisionedAt",
            "hubState",
            "failures",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

#[derive(Debug, Clone)]
struct Confirmation {
    uid: String,
    generation: Option<i64>,
    epoch: u64,
    at: Instant,
}

/// State of the Meter controller.
pub struct MeterContext {
    pub ctx: Arc<Context>,
    meters: Store<Meter>,
    serials: Arc<SerialIndex>,
    hubs: Store<DeviceHub>,
    namespaces: TerminatingNamespaces,
    clients: HubClients,
    epochs: Arc<HubEpochs>,
    confirmed: Mutex<HashMap<(String, String), Confirmation>>,
    errors: Mutex<HashMap<(String, String), u32>>,
}

impl MeterContext {
    fn is_confirmed(&self, key: &(String, String), meter: &Meter, epoch: u64) -> bool {
        let Ok(map) = self.confirmed.lock() else {
            return false;
        };
        map.get(key).is_some_and(|c| {
            Some(c.uid.as_str()) == meter.meta().uid.as_deref()
                && c.generation == meter.meta().generation
                && c.epoch == epoch
                && c.at.elapsed() < self.ctx.settings.resync
        })
    }

    fn confirm(&self, key: (String, String), meter: &Meter, epoch: u64) {
        if let Ok(mut map) = self.confirmed.lock() {
            map.insert(
                key,
                Confirmation {
                    uid: meter.meta().uid.clone().unwrap_or_default(),
                    generation: meter.meta().generation,
                    epoch,
                    at: Instant::now(),
                },
            );
        }
    }

    fn forget(&self, key: &(String, String)) {
        if let Ok(mut map) = self.confirmed.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.errors.lock() {
            map.remove(key);
        }
    }
}

fn jitter() -> f64 {
    rand::rng().random::<f64>()
}

fn to_action(requeue: Requeue, resync: Duration) -> Action {
    match requeue {
        // Safety net: even a Meter waiting for a change is looked at once per resync period.
        Requeue::AwaitChange => Action::requeue(resync),
        Requeue::After(d) => Action::requeue(d),
    }
}

/// Runs the Meter controller until `shutdown` resolves.
pub async fn run<F>(
    client: kube::Client,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl Fn() -> F,
) where
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let meters: Api<Meter> = Api::all(client.clone());
    let hubs: Api<DeviceHub> = Api::all(client.clone());

    // DeviceHubs are few: a reflector answers "does it exist, is it ready, where is device-hub";
    // its stream also wakes the Meters of a hub that becomes usable or goes away (see `mapper`).
    let (hub_store, hub_writer) = reflector::store::<DeviceHub>();
    let hub_stream = crate::run::cached_watch(hubs, hub_writer)
        .map_ok(mark_deleted)
        .touched_objects();

    let concurrency = concurrency
        .max(1)
        .saturating_mul(CONCURRENCY_FACTOR)
        .min(MAX_CONCURRENCY);
    // Every Meter is cached (10,000 in a large park), without managedFields: each Meter has three
    // managers (the user, the finalizer, the status).
    let (meter_store, meter_writer) = reflector::store::<Meter>();
    let serials = Arc::new(SerialIndex::default());
    let meter_stream = {
        let serials = serials.clone();
        crate::run::cached_watch(meters, meter_writer)
            .inspect_ok(move |event| serials.apply(event))
            .applied_objects()
    };
    let controller = Controller::for_stream(meter_stream, meter_store.clone())
        .with_config(Config::default().concurrency(concurrency));
    ctx.metrics.meter_phases.attach(meter_store.clone());
    let epochs = Arc::new(HubEpochs::default());
    let mctx = Arc::new(MeterContext {
        clients: HubClients::new(
            client.clone(),
            ctx.metrics.clone(),
            ClientSettings::default(),
        ),
        ctx,
        meters: meter_store.clone(),
        serials,
        hubs: hub_store,
        namespaces: TerminatingNamespaces::start(client.clone()),
        epochs: epochs.clone(),
        confirmed: Mutex::new(HashMap::new()),
        errors: Mutex::new(HashMap::new()),
    });

    // A hub that becomes usable wakes its Meters (those waiting, and those to re-assert); a hub
    // that is deleted wakes them so that they report HubNotFound now rather than at the resync.
    let mapper = move |hub: DeviceHub| {
        let (Some(ns), name) = (hub.namespace(), hub.name_any()) else {
            return Vec::new();
        };
        let (check, _) = hub_check(Some(&hub), &ns, &name);
        let became_usable = epochs.observe(&ns, &name, check == HubCheck::Ready);
        if !wakes_meters(became_usable, &check) {
            return Vec::new();
        }
        let refs: Vec<ObjectRef<Meter>> = meter_store
            .state()
            .iter()
            .filter(|m| {
                m.namespace().as_deref() == Some(ns.as_str()) && m.spec.hub_ref.name == name
            })
            .map(|m| ObjectRef::from_obj(m.as_ref()))
            .collect();
        let why = if became_usable {
            "became ready"
        } else {
            "is gone"
        };
        info!(hub = %name, namespace = %ns, meters = refs.len(), "DeviceHub {why}; reconciling its Meters");
        refs
    };

    controller
        .watches_stream(hub_stream, mapper)
        .graceful_shutdown_on(shutdown())
        .run(reconcile, error_policy, mctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "Meter controller");
            }
        })
        .await;
}

/// Reconciles one Meter (through the finalizer helper).
pub async fn reconcile(meter: Arc<Meter>, mctx: Arc<MeterContext>) -> Result<Action, MeterError> {
    let started = std::time::Instant::now();
    let labels = KindLabels { kind: KIND.into() };
    mctx.ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = reconcile_inner(meter, &mctx).await;
    mctx.ctx
        .metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(
    meter: Arc<Meter>,
    mctx: &Arc<MeterContext>,
) -> Result<Action, MeterError> {
    let (Some(ns), Some(name)) = (meter.namespace(), meter.meta().name.clone()) else {
        return Err(MeterError::MissingMetadata);
    };
    if !wait_ready(&mctx.hubs, HUB_CACHE_WAIT).await {
        return Err(MeterError::HubCacheNotReady(HUB_CACHE_WAIT));
    }
    let api: Api<Meter> = Api::namespaced(mctx.ctx.client.clone(), &ns);
    let has_finalizer = meter.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = meter.meta().deletion_timestamp.is_some();
    let writes = (has_finalizer && deleting) || (!has_finalizer && !deleting);
    if writes {
        // Adding or removing the finalizer is an API write.
        mctx.ctx.limiter.acquire().await;
    }
    let result = finalizer(&api, FINALIZER, meter, |event| async {
        match event {
            FinalizerEvent::Apply(m) => apply(m, mctx).await,
            FinalizerEvent::Cleanup(m) => cleanup(m, mctx).await,
        }
    })
    .await;
    let key = (ns.clone(), name.clone());
    match result {
        Ok(action) => {
            if writes {
                mctx.ctx.metrics.write("Meter", "patch");
            }
            if let Ok(mut errors) = mctx.errors.lock() {
                errors.remove(&key);
            }
            Ok(action)
        }
        // A second queued reconcile of a Meter whose finalizer was just removed finds it gone.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(status)))
            if status.code == 404 =>
        {
            Ok(Action::await_change())
        }
        Err(e) => Err(match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => MeterError::Finalizer {
                namespace: ns,
                name,
                message: other.to_string(),
            },
        }),
    }
}

async fn apply(meter: Arc<Meter>, mctx: &MeterContext) -> Result<Action, MeterError> {
    let ns = meter.namespace().ok_or(MeterError::MissingMetadata)?;
    let name = meter.name_any();
    let hub_name = meter.spec.hub_ref.name.clone();
    let hub = mctx
        .hubs
        .get(&ObjectRef::<DeviceHub>::new(&hub_name).within(&ns));
    let (mut check, mut target) = hub_check(hub.as_deref(), &ns, &hub_name);
    if matches!(check, HubCheck::NotReady { .. }) && mctx.epochs.usable(&ns, &hub_name) {
        // The trigger watch already saw the hub usable while the cache lags: ask the API server
        // rather than backing off on stale data.
        let fresh = Api::<DeviceHub>::namespaced(mctx.ctx.client.clone(), &ns)
            .get_opt(&hub_name)
            .await
            .map_err(|source| MeterError::HubRead {
                namespace: ns.clone(),
                name: hub_name.clone(),
                source,
            })?;
        (check, target) = hub_check(fresh.as_ref(), &ns, &hub_name);
    }
    if matches!(check, HubCheck::NotFound { .. }) {
        mctx.clients.forget(&ns, &hub_name);
    }
    let epoch = mctx.epochs.epoch(&ns, &hub_name);
    let key = (ns.clone(), name.clone());
    let status = meter.status.clone().unwrap_or_default();
    let duplicate = earlier_duplicate(&mctx.meters, &mctx.serials, &meter);
    let resync = mctx.ctx.settings.resync;
    let input = Input {
        spec: &meter.spec,
        generation: meter.meta().generation,
        status: &status,
        hub: check,
        duplicate_of: duplicate.as_deref(),
        confirmed: mctx.is_confirmed(&key, &meter, epoch),
        response: None,
        now: chrono::Utc::now(),
        jitter: jitter(),
        resync,
    };
    let decision = match state::transition(&input) {
        Transition::Settle(d) => d,
        Transition::Call => {
            let response = match &target {
                Some(target) => provision(mctx, target, &meter).await,
                None => HubResponse::Unavailable {
                    message: format!("DeviceHub {ns}/{hub_name} has no device-hub address"),
                },
            };
            if matches!(response, HubResponse::Applied(_)) {
                mctx.confirm(key.clone(), &meter, epoch);
            }
            match state::transition(&Input {
                response: Some(&response),
                ..input.clone()
            }) {
                Transition::Settle(d) => d,
                // With an answer the machine always settles; be defensive anyway.
                Transition::Call => {
                    return Ok(Action::requeue(backoff(
                        status.failures.unwrap_or(0).saturating_add(1),
                        jitter(),
                    )));
                }
            }
        }
    };
    if decision.changed {
        write_status(&mctx.ctx, &ns, &name, &decision.status).await?;
        report_transition(&mctx.ctx, &meter, &status, &decision.status).await;
    }
    Ok(to_action(decision.requeue, resync))
}

async fn provision(mctx: &MeterContext, target: &HubTarget, meter: &Meter) -> HubResponse {
    let result = match mctx.clients.get(target).await {
        Ok(client) => client.put(MeterPayload::from(&meter.spec)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(record) => HubResponse::Applied(record),
        Err(HubError::Rejected { message, .. }) => HubResponse::Rejected { message },
        Err(e) => {
            mctx.clients.note_error(target, &e).await;
            HubResponse::Unavailable {
                message: e.to_string(),
            }
        }
    }
}

async fn cleanup(meter: Arc<Meter>, mctx: &MeterContext) -> Result<Action, MeterError> {
    let ns = meter.namespace().ok_or(MeterError::MissingMetadata)?;
    let name = meter.name_any();
    let key = (ns.clone(), name.clone());
    mctx.forget(&key);
    let hub_name = meter.spec.hub_ref.name.clone();
    let serial = meter
        .status
        .as_ref()
        .and_then(|s| s.provisioned_serial_number.clone())
        .unwrap_or_else(|| meter.spec.serial_number.clone());

    let terminating = mctx.namespaces.is_terminating(&ns);
    let hub = match mctx
        .hubs
        .get(&ObjectRef::<DeviceHub>::new(&hub_name).within(&ns))
    {
        _ if terminating => None,
        Some(h) => Some(h),
        // The cache may lag behind a just-created hub: ask the API server before skipping.
        None => Api::<DeviceHub>::namespaced(mctx.ctx.client.clone(), &ns)
            .get_opt(&hub_name)
            .await
            .map_err(|source| MeterError::HubRead {
                namespace: ns.clone(),
                name: hub_name.clone(),
                source,
            })?
            .map(Arc::new),
    };
    let hub = match release_without_deprovision(terminating, hub) {
        Ok(hub) => hub,
        Err(why) => {
            info!(meter = %name, namespace = %ns, hub = %hub_name, "{why}; removing the finalizer without deprovisioning");
            return Ok(Action::await_change());
        }
    };
    let other = holders(&mctx.meters, &mctx.serials, &meter, &serial)
        .into_iter()
        .find(|m| {
            m.metadata.uid != meter.metadata.uid
                && m.meta().deletion_timestamp.is_none()
                && (m.spec.serial_number == serial
                    || m.status
                        .as_ref()
                        .and_then(|s| s.provisioned_serial_number.as_deref())
                        == Some(serial.as_str()))
        });
    if let Some(other) = other {
        info!(meter = %name, namespace = %ns, %serial, other = %other.name_any(),
            "serial is still used by another Meter; not deprovisioning it");
        return Ok(Action::await_change());
    }
    let target = match hub_target(&hub) {
        Ok(Some(t)) => t,
        Ok(None) => {
            info!(meter = %name, namespace = %ns, hub = %hub_name, "hub runs no device-hub; nothing to deprovision");
            return Ok(Action::await_change());
        }
        Err(message) => {
            return Err(MeterError::HubSpec {
                namespace: ns,
                name,
                hub: hub_name,
                message,
            })
        }
    };
    let deprovision = |source: HubError| MeterError::Deprovision {
        namespace: ns.clone(),
        name: name.clone(),
        serial: serial.clone(),
        source,
    };
    let client = mctx.clients.get(&target).await.map_err(deprovision)?;
    if let Err(e) = client.delete(&serial).await {
        mctx.clients.note_error(&target, &e).await;
        return Err(deprovision(e));
    }
    info!(meter = %name, namespace = %ns, %serial, "deprovisioned in device-hub");
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &MeterStatus,
) -> Result<(), MeterError> {
    let api: Api<Meter> = Api::namespaced(ctx.client.clone(), ns);
    ctx.limiter.acquire().await;
    ctx.metrics.write("Meter/status", "patch");
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(status_patch(status)),
    )
    .await
    .map_err(|source| MeterError::Status {
        namespace: ns.to_string(),
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

/// A Warning Event when a Meter turns `Failed` for a new reason (Events are API writes: only
/// transitions that need a person are recorded).
async fn report_transition(ctx: &Context, meter: &Meter, old: &MeterStatus, new: &MeterStatus) {
    if new.phase != MeterPhase::Failed {
        return;
    }
    let old_reason = find(&old.conditions, state::READY).map(|c| c.reason.clone());
    let Some(cond) = find(&new.conditions, state::READY) else {
        return;
    };
    if old.phase == MeterPhase::Failed && old_reason.as_deref() == Some(cond.reason.as_str()) {
        return;
    }
    let action = match cond.reason.as_str() {
        reason::REJECTED => "Provision",
        _ => "Validate",
    };
    ctx.publish(
        &meter.object_ref(&()),
        EventType::Warning,
        &cond.reason,
        action,
        cond.message.clone(),
    )
    .await;
}

fn error_policy(meter: Arc<Meter>, err: &MeterError, mctx: Arc<MeterContext>) -> Action {
    let key = (meter.namespace().unwrap_or_default(), meter.name_any());
    let attempts = match mctx.errors.lock() {
        Ok(mut errors) => {
            let n = errors.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1).min(state::MAX_RECORDED_FAILURES);
            *n
        }
        Err(_) => state::MAX_RECORDED_FAILURES,
    };
    warn!(meter = %key.1, namespace = %key.0, error = %err, attempts, "Meter reconcile failed");
    mctx.ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: KIND.into(),
            reason: err.reason().into(),
        })
        .inc();
    // One Event per error streak step, not per retry of a long outage.
    if attempts < state::MAX_RECORDED_FAILURES {
        let regarding = meter.object_ref(&());
        let message = err.to_string();
        let reason = err.reason();
        let ctx = mctx.ctx.clone();
        tokio::spawn(async move {
            ctx.publish(&regarding, EventType::Warning, reason, "Reconcile", message)
                .await;
        });
    }
    Action::requeue(backoff(attempts.saturating_add(1), jitter()).max(Duration::from_secs(2)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::condition::Condition;
    use crate::crd::device_hub::{DeviceHubSpec, DeviceHubStatus, ServiceStatus};
    use crate::crd::meter::{DesiredState, HubRef, MeterSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn meter(name: &str, serial: &str, created: i64) -> Meter {
        let mut m = Meter::new(
            name,
            MeterSpec {
                hub_ref: HubRef {
                    name: "demo".into(),
                },
                serial_number: serial.into(),
                manufacturer: "m".into(),
                model: "x".into(),
                protocol: "p".into(),
                hes_id: "h".into(),
                location: None,
                desired_state: DesiredState::Active,
            },
        );
        m.metadata.namespace = Some("park".into());
        m.metadata.uid = Some(format!("uid-{name}"));
        m.metadata.creation_timestamp = k8s_openapi::jiff::Timestamp::from_second(created)
            .ok()
            .map(Time);
        m
    }

    fn hub(ready: bool, device_hub_ready: i32) -> DeviceHub {
        let mut h = DeviceHub::new(
            "demo",
            DeviceHubSpec {
                include_default_services: true,
                trust_domain: "cluster.local".into(),
                ..DeviceHubSpec::default()
            },
        );
        h.metadata.namespace = Some("park".into());
        h.status = Some(DeviceHubStatus {
            conditions: vec![Condition::new(
                "Ready",
                if ready {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                if ready {
                    "AllServicesReady"
                } else {
                    "ServicesNotReady"
                },
                "",
                None,
            )],
            services: vec![ServiceStatus {
                name: DEVICE_HUB.into(),
                desired_replicas: 1,
                ready_replicas: device_hub_ready,
                certificate: None,
            }],
            ..DeviceHubStatus::default()
        });
        h
    }

    #[test]
    fn later_meter_with_the_same_serial_is_the_duplicate() {
        let a = meter("a", "SN1", 100);
        let b = meter("b", "SN1", 200);
        let c = meter("c", "SN1", 100);
        assert!(same_serial(&a, &b));
        assert!(!same_serial(&a, &a));
        assert!(is_earlier(&a, &b) && !is_earlier(&b, &a));
        // Same creation second: the name decides.
        assert!(is_earlier(&a, &c) && !is_earlier(&c, &a));
        let mut other_hub = meter("d", "SN1", 50);
        other_hub.spec.hub_ref.name = "other".into();
        assert!(!same_serial(&a, &other_hub));

        let (store, mut writer) = reflector::store::<Meter>();
        let serials = SerialIndex::default();
        for m in [&a, &b, &c, &other_hub] {
            let event = watcher::Event::Apply(m.clone());
            writer.apply_watcher_event(&event);
            serials.apply(&event);
        }
        assert_eq!(
            earlier_duplicate(&store, &serials, &b).as_deref(),
            Some("a")
        );
        // c (same second as a, later name) yields to a, the earliest holder.
        assert_eq!(
            earlier_duplicate(&store, &serials, &c).as_deref(),
            Some("a")
        );
        assert_eq!(earlier_duplicate(&store, &serials, &a), None);
        assert_eq!(earlier_duplicate(&store, &serials, &other_hub), None);
    }

    #[test]
    fn hub_readiness_needs_ready_condition_and_a_ready_device_hub() {
        let (check, target) = hub_check(Some(&hub(true, 1)), "park", "demo");
        assert_eq!(check, HubCheck::Ready);
        let t = target.expect("target");
        assert_eq!(
            (t.port, t.spiffe_id()),
            (
                8443,
                "spiffe://cluster.local/ns/park/sa/demo-device-hub".to_string()
            )
        );

        assert!(matches!(
            hub_check(Some(&hub(false, 1)), "park", "demo").0,
            HubCheck::NotReady { .. }
        ));
        let (check, _) = hub_check(Some(&hub(true, 0)), "park", "demo");
        let HubCheck::NotReady { message } = check else {
            panic!("expected NotReady")
        };
        assert!(message.contains("no ready replica"), "{message}");
        assert!(matches!(
            hub_check(None, "park", "demo").0,
            HubCheck::NotFound { .. }
        ));
        let mut deleting = hub(true, 1);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(matches!(
            hub_check(Some(&deleting), "park", "demo").0,
            HubCheck::NotFound { .. }
        ));
    }

    #[test]
    fn a_deleted_hub_wakes_its_meters_a_not_ready_one_does_not() {
        let hub: DeviceHub = serde_json::from_value(serde_json::json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
            "metadata": {"name": "h", "namespace": "ns"}, "spec": {}
        }))
        .unwrap();
        let watcher::Event::Delete(gone) = mark_deleted(watcher::Event::Delete(hub.clone())) else {
            panic!("a Delete event stays a Delete event");
        };
        let (check, target) = hub_check(Some(&gone), "ns", "h");
        assert!(matches!(check, HubCheck::NotFound { .. }), "{check:?}");
        assert!(target.is_none());
        assert!(wakes_meters(false, &check));
        let watcher::Event::Apply(seen) = mark_deleted(watcher::Event::Apply(hub)) else {
            panic!("an Apply event stays an Apply event");
        };
        assert!(seen.meta().deletion_timestamp.is_none());
        let (not_ready, _) = hub_check(Some(&seen), "ns", "h");
        assert!(!matches!(not_ready, HubCheck::NotFound { .. }));
        assert!(!wakes_meters(false, &not_ready));
        assert!(wakes_meters(true, &not_ready));
    }

    #[test]
    fn epochs_grow_only_when_a_hub_becomes_usable() {
        let e = HubEpochs::default();
        assert!(!e.observe("ns", "h", true), "first sight is no transition");
        assert_eq!(e.epoch("ns", "h"), 0);
        assert!(!e.observe("ns", "h", false));
        assert!(e.observe("ns", "h", true));
        assert_eq!(e.epoch("ns", "h"), 1);
        assert!(!e.observe("ns", "h", true));
        assert_eq!(e.epoch("ns", "other"), 0);
    }

    #[test]
    fn deleted_meters_are_released_with_their_namespace_or_hub() {
        let ready = Arc::new(hub(true, 1));
        let mut deleting = hub(true, 1);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let deleting = Arc::new(deleting);

        assert!(release_without_deprovision(false, Some(ready.clone())).is_ok());
        assert_eq!(
            release_without_deprovision(true, Some(ready)).err(),
            Some("namespace is being deleted, and its hub with it")
        );
        assert_eq!(
            release_without_deprovision(false, Some(deleting)).err(),
            Some("hub is being deleted")
        );
        assert_eq!(
            release_without_deprovision(false, None).err(),
            Some("hub is gone")
        );
    }

    #[test]
    fn status_patch_clears_absent_fields() {
        let st = MeterStatus {
            phase: MeterPhase::Pending,
            ..MeterStatus::default()
        };
        let p = status_patch(&st);
        assert_eq!(p["status"]["phase"], "Pending");
        assert!(p["status"]["failures"].is_null());
        assert!(p["status"]
            .as_object()
            .is_some_and(|m| m.contains_key("deviceId")));
    }
}
