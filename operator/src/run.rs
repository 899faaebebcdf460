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
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{error, info, warn};

use crate::controller::{self, device_hub, network, Context, Error, Settings};
use crate::crd::{DeviceHub, ServiceACL};
use crate::resources::names::{FIELD_MANAGER, LABEL_MANAGED_BY};
use crate::runtime::http::{self, Health};
use crate::runtime::leader::LeaderElector;
use crate::runtime::metrics::{ErrorLabels, Metrics};

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
    /// Labels of the operator's pods (`k=v,k=v`), allowed by hub NetworkPolicies to reach device-hub.
    #[arg(
        long,
        env = "MPM_POD_LABELS",
        default_value = "app.kubernetes.io/name=mpm-operator"
    )]
    pub pod_labels: String,
    /// Periodic reconcile of every object even without changes, in seconds.
    #[arg(long, default_value_t = 600)]
    pub resync_seconds: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
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
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings,
        pdb_api.clone(),
        args.write_qps,
        args.write_burst,
    ));
    health.ready.store(true, Ordering::Relaxed);

    let controllers = run_controllers(client, ctx.clone(), args.concurrency, pdb_api, shutdown);
    tokio::select! {
        _ = controllers => info!("controllers stopped"),
        _ = async { if args.leader_elect { elector.hold().await } else { futures::future::pending().await } } => {
            error!("lost leadership; exiting so that a fresh process can stand by");
            std::process::exit(1);
        }
    }
    let _ = server.await;
    Ok(())
}

async fn run_controllers<F>(
    client: Client,
    ctx: Arc<Context>,
    concurrency: u16,
    pdb_api: kube::discovery::ApiResource,
    shutdown: impl Fn() -> F,
) where
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    let hubs: Api<DeviceHub> = Api::all(client.clone());
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);
    let hub_controller = Controller::new(hubs, watcher::Config::default());
    let hub_store = hub_controller.store();
    let hub_controller = hub_controller
        .with_config(config.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Secret>::all(client.clone()), owned.clone())
        .owns_with(
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &pdb_api),
            pdb_api.clone(),
            owned.clone(),
        )
        // Any NetworkPolicy in a namespace (ours or hand-written) re-verifies the hubs there.
        .watches(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default(),
            move |np: NetworkPolicy| {
                let ns = np.namespace();
                hub_store
                    .state()
                    .iter()
                    .filter(|h| h.namespace() == ns)
                    .map(|h| ObjectRef::from_obj(h.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<ServiceACL>::all(client.clone()),
            watcher::Config::default(),
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
            if let Err(e) = res {
                warn!(error = %e, "DeviceHub controller");
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
