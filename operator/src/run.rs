//! `mpm-operator run`: leader election, the controllers, health and metrics, graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, error, info, warn};

use crate::admission::{self, WebhookSettings};
use crate::controller::{self, device_hub, network, Caches, Context, Error, Settings};
use crate::crd::{DeviceHub, ServiceACL};
use crate::resources::names::{FIELD_MANAGER, LABEL_MANAGED_BY};
use crate::runtime::api_client::PoolSettings;
use crate::runtime::http::{self, Health};
use crate::runtime::leader::LeaderElector;
use crate::runtime::metrics::{ErrorLabels, Metrics};
use crate::runtime::shutdown::{drain_within, Drain, DRAIN_LIMIT};

/// Options of `mpm-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "MPM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace of the operator (its Lease lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mpm-system")]
    pub namespace: String,
    /// Name of this replica in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Leader election on the `mpm-operator` Lease; disable only for a single local replica.
    #[arg(long, env = "MPM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Lease duration in seconds: a standby takes over at most this long after the leader died.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Concurrent reconciliations per kind.
    #[arg(long, env = "MPM_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Average API writes per second (token bucket).
    #[arg(long, env = "MPM_WRITE_QPS", default_value_t = 200.0)]
    pub write_qps: f64,
    /// Burst of API writes.
    #[arg(long, env = "MPM_WRITE_BURST", default_value_t = 400)]
    pub write_burst: u32,
    /// Connections to the API server kept open, which is also how many requests are sent at once
    /// (more queue in the operator). A large park provisions faster with more, at about 100 KiB of
    /// memory each.
    #[arg(long, env = "MPM_API_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub api_connections: u16,
    /// Labels of the operator's pods (`k=v,k=v`), allowed by hub NetworkPolicies to reach device-hub.
    #[arg(
        long,
        env = "MPM_POD_LABELS",
        default_value = "app.kubernetes.io/name=mpm-operator"
    )]
    pub pod_labels: String,
    /// Address of the Meter admission webhook (HTTPS); unset, no webhook is served and the Meter
    /// controller adds finalizers itself.
    #[arg(long, env = "MPM_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// Service in front of the webhook; its DNS names go into the serving certificate.
    #[arg(long, default_value = "mpm-operator-webhook")]
    pub webhook_service: String,
    /// Secret (in the operator's namespace) holding the webhook's CA and serving certificate.
    #[arg(long, default_value = "mpm-operator-webhook-tls")]
    pub webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps up to date.
    #[arg(long, default_value = "mpm-operator")]
    pub webhook_configuration: String,
    /// Periodic reconcile of every object even without changes, in seconds.
    #[arg(long, default_value_t = 600)]
    pub resync_seconds: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = crate::runtime::api_client::client(PoolSettings::with_connections(usize::from(
        args.api_connections,
    )))
    .await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let rx = shutdown_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        }
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    let server = tokio::spawn(http::serve(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown(),
    ));

    // Every replica serves the webhook, leader or standby.
    let webhook = args.webhook_addr.map(|addr| {
        tokio::spawn(admission::run(
            client.clone(),
            WebhookSettings {
                addr,
                namespace: args.namespace.clone(),
                service: args.webhook_service.clone(),
                secret: args.webhook_secret.clone(),
                configuration: args.webhook_configuration.clone(),
            },
            metrics.clone(),
            shutdown.clone(),
        ))
    });

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let elector = LeaderElector::new(
        client.clone(),
        &args.namespace,
        "mpm-operator-leader",
        &identity,
        Duration::from_secs(args.lease_seconds),
    );
    if args.leader_elect {
        // A standby is healthy and ready (it serves metrics); it only does not reconcile.
        health.ready.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown() => { return Ok(()); }
        }
    }
    metrics.leader.set(1);

    let pdb_api = controller::discover_pdb_api(&client).await?;
    info!(api_version = %pdb_api.api_version, "PodDisruptionBudget API from discovery");
    let settings = Settings {
        namespace: args.namespace.clone(),
        pod_labels: parse_labels(&args.pod_labels),
        resync: Duration::from_secs(args.resync_seconds),
    };
    let (policies, policy_writer) = reflector::store::<NetworkPolicy>();
    let (acls, acl_writer) = reflector::store::<ServiceACL>();
    let (hubs, hub_writer) = reflector::store::<DeviceHub>();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings,
        pdb_api.clone(),
        args.write_qps,
        args.write_burst,
        Caches {
            policies,
            acls,
            hubs,
        },
    ));
    health.ready.store(true, Ordering::Relaxed);

    let writers = CacheWriters {
        policies: policy_writer,
        acls: acl_writer,
        hubs: hub_writer,
    };
    let controllers = run_controllers(
        client,
        ctx.clone(),
        args.concurrency,
        pdb_api,
        writers,
        shutdown.clone(),
    );
    tokio::select! {
        drained = drain_within(controllers, shutdown(), DRAIN_LIMIT) => {
            match drained {
                Drain::Finished => info!("controllers stopped"),
                Drain::Abandoned => warn!(
                    limit_seconds = DRAIN_LIMIT.as_secs(),
                    "controllers still running after the shutdown signal; stopping without them"
                ),
            }
            if args.leader_elect {
                // Hand over now instead of letting the standby wait for the lease to expire.
                elector.release().await;
            }
        }
        _ = async { if args.leader_elect { elector.hold().await } else { futures::future::pending().await } } => {
            error!("lost leadership; exiting so that a fresh process can stand by");
            std::process::exit(1);
        }
    }
    let _ = server.await;
    if let Some(webhook) = webhook {
        let _ = webhook.await;
    }
    Ok(())
}

async fn run_controllers<F>(
    client: Client,
    ctx: Arc<Context>,
    concurrency: u16,
    pdb_api: kube::discovery::ApiResource,
    writers: CacheWriters,
    shutdown: impl Fn() -> F,
) where
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    // Owned objects only trigger reconciles of their hub, so their metadata is enough: full
    // Secrets and Deployments are never decoded or held in memory.
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    let hub_store = ctx.caches.hubs.clone();
    let hub_stream =
        cached_watch(Api::<DeviceHub>::all(client.clone()), writers.hubs).applied_objects();
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);
    let hub_controller = Controller::for_stream(hub_stream, hub_store.clone())
        .with_config(config.clone())
        .owns_stream(owned_metadata::<Deployment>(&client, &owned))
        .owns_stream(owned_metadata::<Service>(&client, &owned))
        .owns_stream(owned_metadata::<ServiceAccount>(&client, &owned))
        .owns_stream(owned_metadata::<ConfigMap>(&client, &owned))
        .owns_stream(owned_metadata::<Secret>(&client, &owned))
        .owns_stream_with(
            watcher(
                Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &pdb_api),
                owned.clone(),
            )
            .default_backoff()
            .touched_objects(),
            pdb_api.clone(),
        )
        // A hub's own NetworkPolicy re-verifies that hub; any other policy (another hub's or
        // hand-written) may change what is in force, so it re-verifies every hub of its namespace.
        .watches_stream(
            cached_watch(Api::<NetworkPolicy>::all(client.clone()), writers.policies)
                .touched_objects(),
            move |np: NetworkPolicy| {
                let ns = np.namespace();
                if let (Some(hub), Some(ns)) = (network::managing_hub(&np.metadata), &ns) {
                    return vec![ObjectRef::<DeviceHub>::new(hub).within(ns)];
                }
                hub_store
                    .state()
                    .iter()
                    .filter(|h| h.namespace() == ns)
                    .map(|h| ObjectRef::from_obj(h.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            cached_watch(Api::<ServiceACL>::all(client.clone()), writers.acls).touched_objects(),
            |acl: ServiceACL| {
                acl.namespace()
                    .map(|ns| ObjectRef::<DeviceHub>::new(&acl.spec.hub_ref.name).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown())
        .run(
            device_hub::reconcile,
            error_policy::<DeviceHub>,
            ctx.clone(),
        )
        .for_each(|res| async move {
            use kube::runtime::controller::Error as ControllerError;
            match res {
                // Expected: an owned object changed after its hub was deleted.
                Err(ControllerError::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "event for a DeviceHub that is gone")
                }
                // Already logged and counted by `error_policy`.
                Err(ControllerError::ReconcilerFailed(..)) | Ok(_) => {}
                Err(e) => warn!(error = %e, "DeviceHub controller"),
            }
        });

    let acl_controller = Controller::new(
        Api::<ServiceACL>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .graceful_shutdown_on(shutdown())
    .run(reconcile_acl, error_policy::<ServiceACL>, ctx.clone())
    .for_each(|_| async {});

    futures::join!(
        hub_controller,
        acl_controller,
        crate::meter::controller::run(client.clone(), ctx.clone(), concurrency, shutdown)
    );
}

/// ServiceACLs whose hub exists are handled by the hub's reconcile; this reports missing hubs.
async fn reconcile_acl(acl: Arc<ServiceACL>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = acl.namespace().ok_or(Error::MissingMetadata)?;
    let hubs: Api<DeviceHub> = Api::namespaced(ctx.client.clone(), &ns);
    let hub = hubs
        .get_opt(&acl.spec.hub_ref.name)
        .await
        .map_err(|source| Error::Get {
            kind: "DeviceHub".into(),
            name: acl.spec.hub_ref.name.clone(),
            source,
        })?;
    if hub.is_none() {
        network::report_missing_hub(&ctx, &acl).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    Ok(Action::await_change())
}

/// The writing halves of `Caches`, driven by the DeviceHub controller's watch streams.
struct CacheWriters {
    policies: reflector::store::Writer<NetworkPolicy>,
    acls: reflector::store::Writer<ServiceACL>,
    hubs: reflector::store::Writer<DeviceHub>,
}

/// The metadata of the operator's own objects of kind `K`, as reconcile triggers for their hub.
fn owned_metadata<K>(
    client: &Client,
    owned: &watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(
        Api::<PartialObjectMeta<K>>::all(client.clone()),
        owned.clone(),
    )
    .default_backoff()
    .touched_objects()
}

/// The watch of every `K` that fills `writer`'s cache. Cached objects are stored without
/// managedFields, often the largest part of their metadata, which no reader of a cache needs.
pub(crate) fn cached_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
        .reflect(writer)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind = K::kind(&()).to_string();
    warn!(kind = %kind, name = %obj.meta().name.clone().unwrap_or_default(), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: kind.clone(),
            reason: err.reason().into(),
        })
        .inc();
    let regarding = obj.object_ref(&());
    let message = err.to_string();
    let reason = err.reason();
    tokio::spawn(async move {
        ctx.publish(&regarding, EventType::Warning, reason, "Reconcile", message)
            .await;
    });
    Action::requeue(Duration::from_secs(10))
}

fn parse_labels(s: &str) -> std::collections::BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "mpm-operator".into())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
