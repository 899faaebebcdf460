//! Controllers: the Kubernetes I/O around the pure computations. One module per kind.

pub mod apply;
pub mod certs;
pub mod device_hub;
pub mod events;
pub mod network;
pub mod rotation;

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};
use kube::Client;

use crate::runtime::metrics::Metrics;
use crate::runtime::ratelimit::RateLimiter;

/// Errors of a reconciliation, each with the object and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind} {name}: {source}")]
    Get {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {kind} {name}: {source}")]
    Status {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer of {name}: {message}")]
    Finalizer { name: String, message: String },
    #[error("object has no namespace or name")]
    MissingMetadata,
    #[error("the {0} watch cache did not fill within {1:?}; is the API server reachable and the operator allowed to list {0}?")]
    CacheNotReady(&'static str, std::time::Duration),
}

impl Error {
    /// The write failed because the object's namespace is being deleted: nothing to retry, the
    /// namespace takes the hub with it.
    pub fn namespace_terminating(&self) -> bool {
        let source = match self {
            Error::Apply { source, .. }
            | Error::Delete { source, .. }
            | Error::Status { source, .. } => source,
            _ => return false,
        };
        matches!(source, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
    }

    /// Machine-readable reason, for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "ApplyFailed",
            Error::List { .. } => "ListFailed",
            Error::Get { .. } => "GetFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Status { .. } => "StatusFailed",
            Error::Finalizer { .. } => "FinalizerFailed",
            Error::MissingMetadata => "MissingMetadata",
            Error::CacheNotReady(..) => "CacheNotReady",
        }
    }
}

/// Settings of the running operator.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace the operator runs in (its Lease, and the source of its NetworkPolicy access).
    pub namespace: String,
    /// Labels of the operator's pods, for the NetworkPolicies that let it reach device-hub.
    pub pod_labels: std::collections::BTreeMap<String, String>,
    /// Reconcile at least this often even without changes.
    pub resync: std::time::Duration,
}

/// Shared state of all controllers.
pub struct Context {
    pub client: Client,
    pub events: events::EventQueue,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    pub settings: Settings,
    /// `policy/v1` or `policy/v1beta1`, from API discovery.
    pub pdb_api: kube::discovery::ApiResource,
    pub caches: Caches,
}

/// Watch caches shared by the reconcilers (filled by the controllers' watch streams, without
/// managedFields). Reading them instead of listing keeps a reconcile's cost independent of how
/// many hubs share a namespace.
#[derive(Clone)]
pub struct Caches {
    /// Every NetworkPolicy of the cluster: the ACL verification needs all policies in force.
    pub policies: kube::runtime::reflector::Store<k8s_openapi::api::networking::v1::NetworkPolicy>,
    pub acls: kube::runtime::reflector::Store<crate::crd::ServiceACL>,
    /// Every DeviceHub (the DeviceHub controller's own cache): a hub's names and identities are
    /// checked against the other hubs of its namespace.
    pub hubs: kube::runtime::reflector::Store<crate::crd::DeviceHub>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        pdb_api: kube::discovery::ApiResource,
        writes_per_second: f64,
        burst: u32,
        caches: Caches,
    ) -> Self {
        let reporter = Reporter {
            controller: "mpm-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            // Events get a budget of their own: half the object write rate.
            events: events::EventQueue::start(
                Recorder::new(client.clone(), reporter),
                metrics.clone(),
                writes_per_second / 2.0,
                burst,
            ),
            client,
            metrics,
            limiter: RateLimiter::new(writes_per_second, burst),
            settings,
            pdb_api,
            caches,
        }
    }
}

/// Finds the PodDisruptionBudget API the cluster serves: `policy/v1` (Kubernetes >= 1.21) or
/// `policy/v1beta1` (1.20).
pub async fn discover_pdb_api(
    client: &Client,
) -> Result<kube::discovery::ApiResource, kube::Error> {
    use kube::discovery::{ApiGroup, Discovery};
    let discovery = Discovery::new(client.clone())
        .filter(&["policy"])
        .run()
        .await?;
    for group in discovery.groups() {
        if group.name() != "policy" {
            continue;
        }
        for version in ["v1", "v1beta1"] {
            if let Some((ar, _)) = group
                .versioned_resources(version)
                .into_iter()
                .find(|(ar, _)| ar.kind == "PodDisruptionBudget")
            {
                return Ok(ar);
            }
        }
        let _: &ApiGroup = group;
    }
    Ok(kube::discovery::ApiResource {
        group: "policy".into(),
        version: "v1".into(),
        api_version: "policy/v1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    })
}
