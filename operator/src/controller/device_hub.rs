//! DeviceHub reconciliation: read → validate → build desired objects (pure) → apply → prune → status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::apply::{apply, list_by_name, prune};
use super::{certs, network, Context, Error};
use crate::crd::condition::{find, merge_conditions, Condition, ConditionStatus};
use crate::crd::device_hub::{DeviceHub, DeviceHubStatus, ServiceStatus};
use crate::resources::hub::{describe, resolve_services, ResolvedService, SpecError};
use crate::resources::names::{self, hub_selector};
use crate::resources::workload::{self, HubContext};
use crate::resources::{ingest, isolation};

pub const KIND: &str = "DeviceHub";

pub async fn reconcile(hub: Arc<DeviceHub>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .get_or_create(&crate::runtime::metrics::KindLabels { kind: KIND.into() })
        .inc();
    let result = match reconcile_inner(&hub, &ctx).await {
        // Writes into a terminating namespace fail until it is gone; retrying would only spin.
        Err(e) if e.namespace_terminating() => Ok(Action::await_change()),
        other => other,
    };
    ctx.metrics
        .reconcile_duration
        .get_or_create(&crate::runtime::metrics::KindLabels { kind: KIND.into() })
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(hub: &DeviceHub, ctx: &Context) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (hub.namespace(), hub.meta().name.clone()) else {
        return Err(Error::MissingMetadata);
    };
    if hub.meta().deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove everything.
        return Ok(Action::await_change());
    }
    let regarding = hub.object_ref(&());
    let generation = hub.meta().generation;
    let old_status = hub.status.clone().unwrap_or_default();

    let services = match validate(hub, &ns, &name, ctx).await? {
        Ok(s) => s,
        Err((errors, recheck)) => {
            let message = describe(&errors);
            let already = find(&old_status.conditions, "Ready").is_some_and(|c| {
                c.reason == "InvalidSpec"
                    && c.message == message
                    && c.observed_generation == generation
            });
            if !already {
                warn!(hub = %name, namespace = %ns, %message, "invalid DeviceHub spec");
                ctx.publish(
                    &regarding,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    message.clone(),
                )
                .await;
            }
            let mut status = old_status.clone();
            status.observed_generation = generation;
            status.conditions = merge_conditions(
                &old_status.conditions,
                vec![
                    Condition::new(
                        "Ready",
                        ConditionStatus::False,
                        "InvalidSpec",
                        message.clone(),
                        generation,
                    ),
                    Condition::new(
                        "Progressing",
                        ConditionStatus::False,
                        "InvalidSpec",
                        "fix the spec to continue",
                        generation,
                    ),
                    Condition::new(
                        "Degraded",
                        ConditionStatus::True,
                        "InvalidSpec",
                        message,
                        generation,
                    ),
                ],
            );
            write_status(ctx, &ns, &name, &old_status, status).await?;
            // A conflict with another hub ends when that hub changes or goes away, which does not
            // wake this one: look again now and then. Otherwise nothing to retry until the spec
            // changes: no hot loop on bad input.
            return Ok(if recheck {
                Action::requeue(ISOLATION_RECHECK)
            } else {
                Action::await_change()
            });
        }
    };
    let owner = hub
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata)?;
    let hub_ctx = HubContext {
        name: &name,
        namespace: &ns,
        spec: &hub.spec,
        owner,
        services: &services,
    };

    let ingest_auth = ingest::ingest_auth(hub.spec.hes.as_ref());
    let ingest_source = ingest_auth_source(ctx, &ns, ingest_auth.as_ref()).await?;
    let certificates = certs::reconcile(ctx, hub, &hub_ctx, &regarding).await?;
    // Workloads and network policies are independent of each other.
    let (deployments, ()) = futures::try_join!(
        apply_workloads(ctx, hub, &hub_ctx, &regarding),
        network::reconcile(ctx, hub, &hub_ctx, &regarding),
    )?;

    // Status.
    let mut service_status = Vec::new();
    let mut ready = 0;
    for svc in &services {
        let live = deployments.get(&names::object_name(&name, &svc.name));
        let ready_replicas = live
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let updated = live
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.updated_replicas)
            .unwrap_or(0);
        let generation_seen = live.is_some_and(|d| {
            d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
        });
        if ready_replicas >= svc.replicas && updated >= svc.replicas && generation_seen {
            ready += 1;
        }
        service_status.push(ServiceStatus {
            name: svc.name.clone(),
            desired_replicas: svc.replicas,
            ready_replicas,
            certificate: certificates.services.get(&svc.name).cloned(),
        });
    }
    let all_ready = ready == services.len();
    let stuck: Vec<String> = deployments
        .values()
        .filter(|d| {
            d.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
        })
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    let mut conditions = vec![];
    let (ready_status, ready_reason, ready_message) = if !certificates.ready.0 {
        (
            ConditionStatus::False,
            "CertificatesNotReady",
            certificates.ready.2.clone(),
        )
    } else if all_ready {
        (
            ConditionStatus::True,
            "AllServicesReady",
            format!("{ready}/{} services ready", services.len()),
        )
    } else {
        (
            ConditionStatus::False,
            "ServicesNotReady",
            format!("{ready}/{} services ready", services.len()),
        )
    };
    conditions.push(Condition::new(
        "Ready",
        ready_status,
        ready_reason,
        ready_message,
        generation,
    ));
    conditions.push(if all_ready {
        Condition::new(
            "Progressing",
            ConditionStatus::False,
            "Stable",
            "every service runs its declared replicas",
            generation,
        )
    } else {
        Condition::new(
            "Progressing",
            ConditionStatus::True,
            "RollingOut",
            "waiting for services to become ready",
            generation,
        )
    });
    conditions.push(if !stuck.is_empty() {
        Condition::new(
            "Degraded",
            ConditionStatus::True,
            "ProgressDeadlineExceeded",
            format!("deployments not progressing: {}", stuck.join(", ")),
            generation,
        )
    } else if !certificates.ready.0 {
        Condition::new(
            "Degraded",
            ConditionStatus::True,
            certificates.ready.1,
            certificates.ready.2.clone(),
            generation,
        )
    } else {
        Condition::new(
            "Degraded",
            ConditionStatus::False,
            "AsExpected",
            "",
            generation,
        )
    });
    conditions.push(Condition::new(
        "CertificatesReady",
        if certificates.ready.0 {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        certificates.ready.1,
        certificates.ready.2.clone(),
        generation,
    ));
    conditions.push(Condition::new(
        "CARotationInProgress",
        if certificates.rotation.0 {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        certificates.rotation.1,
        certificates.rotation.2.clone(),
        generation,
    ));
    let (ingest_ok, ingest_reason, ingest_message) =
        ingest::auth_condition(&ns, ingest_auth.as_ref(), ingest_source);
    conditions.push(Condition::new(
        "IngestAuthenticated",
        if ingest_ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        ingest_reason,
        ingest_message,
        generation,
    ));
    let status = DeviceHubStatus {
        observed_generation: generation,
        conditions: merge_conditions(&old_status.conditions, conditions),
        ready_services: Some(format!("{ready}/{}", services.len())),
        services: service_status,
        certificate_authorities: certificates.authorities.clone(),
        earliest_certificate_expiry: certificates.earliest_expiry.clone(),
    };
    write_status(ctx, &ns, &name, &old_status, status).await?;

    let mut requeue = ctx.settings.resync;
    if let Some(at) = certificates.next_check {
        let until = (at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(1));
        requeue = requeue.min(until.max(Duration::from_secs(1)));
    }
    if !all_ready {
        // Deployment status changes wake us through the watch; this is only a safety net.
        requeue = requeue.min(Duration::from_secs(30));
    }
    Ok(Action::requeue(requeue))
}

/// What exists of the Secret or ConfigMap `spec.hes.auth` names. Only the key names are looked at;
/// the token itself is never kept, logged or compared here.
async fn ingest_auth_source(
    ctx: &Context,
    ns: &str,
    auth: Option<&ingest::IngestAuth<'_>>,
) -> Result<ingest::AuthSource, Error> {
    let get_failed = |kind: &str, name: &str| {
        let (kind, name) = (kind.to_string(), name.to_string());
        move |source| Error::Get { kind, name, source }
    };
    let (keys, wanted): (Option<Vec<String>>, &str) = match auth {
        None => return Ok(ingest::AuthSource::NotFound),
        Some(ingest::IngestAuth::Token { secret }) => (
            Api::<Secret>::namespaced(ctx.client.clone(), ns)
                .get_opt(secret)
                .await
                .map_err(get_failed("Secret", secret))?
                .map(|s| s.data.unwrap_or_default().into_keys().collect()),
            ingest::INGEST_TOKEN_KEY,
        ),
        Some(ingest::IngestAuth::ClientCa { config_map }) => (
            Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(config_map)
                .await
                .map_err(get_failed("ConfigMap", config_map))?
                .map(|c| {
                    let data = c.data.unwrap_or_default().into_keys();
                    let binary = c.binary_data.unwrap_or_default().into_keys();
                    data.chain(binary).collect()
                }),
            ingest::INGEST_CA_KEY,
        ),
    };
    Ok(match keys {
        None => ingest::AuthSource::NotFound,
        Some(keys) if keys.iter().any(|k| k == wanted) => ingest::AuthSource::Present,
        Some(_) => ingest::AuthSource::KeyMissing,
    })
}

/// How often a hub refused for a collision with another hub (or a Secret it may not read) looks
/// again.
const ISOLATION_RECHECK: Duration = Duration::from_secs(60);

/// The validation step: the spec on its own, then against the operator and the other hubs of the
/// namespace (names, identities, Secrets; pure, from the DeviceHub cache), then the labels of the
/// Secrets its environment reads (the only I/O). `Err((errors, recheck))`: refuse the spec, and
/// whether the refusal depends on other objects (so it may end without a change of this hub).
/// Nothing is applied before this passes: a hub that collides changes nothing.
async fn validate(
    hub: &DeviceHub,
    ns: &str,
    name: &str,
    ctx: &Context,
) -> Result<Result<Vec<ResolvedService>, (Vec<SpecError>, bool)>, Error> {
    let services = match resolve_services(name, &hub.spec) {
        Ok(s) => s,
        Err(errors) => return Ok(Err((errors, false))),
    };
    if !crate::runtime::cache_ready::wait_ready(&ctx.caches.hubs, HUB_CACHE_WAIT).await {
        return Err(Error::CacheNotReady("DeviceHub", HUB_CACHE_WAIT));
    }
    let service_names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let mut errors = isolation::validate(ns, hub, &service_names, &ctx.caches.hubs.state());
    let refused: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for (field, secret) in isolation::secret_key_refs(&hub.spec) {
        if refused.contains(&field) {
            continue;
        }
        let meta = secrets
            .get_metadata_opt(&secret)
            .await
            .map_err(|source| Error::Get {
                kind: "Secret".into(),
                name: secret.clone(),
                source,
            })?;
        if meta
            .is_some_and(|m| isolation::managed_by_operator(&m.metadata.labels.unwrap_or_default()))
        {
            errors.push(SpecError::new(
                field,
                format!("Secret {secret:?} may not be read by a service: the operator manages it"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Ok(services))
    } else {
        Ok(Err((errors, true)))
    }
}

const HUB_CACHE_WAIT: Duration = Duration::from_secs(30);

/// Applies every per-service object and prunes what the hub no longer declares.
/// Returns the live Deployments (as read before applying) for status.
async fn apply_workloads(
    ctx: &Context,
    hub: &DeviceHub,
    hub_ctx: &HubContext<'_>,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<BTreeMap<String, Deployment>, Error> {
    let ns = hub_ctx.namespace;
    let selector = format!(
        "{},{}={}",
        hub_selector(hub_ctx.name),
        CONTROLLER_LABEL,
        "devicehub"
    );
    let client = ctx.client.clone();
    let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pdb_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ctx.pdb_api);

    let live_sa = list_by_name(&sa_api, "ServiceAccount", &selector).await?;
    let live_cm = list_by_name(&cm_api, "ConfigMap", &selector).await?;
    let live_dep = list_by_name(&dep_api, "Deployment", &selector).await?;
    let live_svc = list_by_name(&svc_api, "Service", &selector).await?;
    let live_pvc = list_by_name(&pvc_api, "PersistentVolumeClaim", &selector).await?;
    let live_pdb = list_by_name(&pdb_api, "PodDisruptionBudget", &selector).await?;

    let mut keep = Vec::new();
    let mut keep_pdb = Vec::new();
    for svc in hub_ctx.services {
        keep.push(names::object_name(hub_ctx.name, &svc.name));
        keep.push(names::config_map(hub_ctx.name, &svc.name));
        if svc.replicas > 1 {
            keep_pdb.push(names::object_name(hub_ctx.name, &svc.name));
        }
    }
    // Services are independent: apply them concurrently (the write limiter still bounds the rate).
    let per_service = hub_ctx.services.iter().map(|svc| {
        let (sa_api, cm_api, dep_api, svc_api, pvc_api, pdb_api) =
            (&sa_api, &cm_api, &dep_api, &svc_api, &pvc_api, &pdb_api);
        let (live_sa, live_cm, live_dep, live_svc, live_pvc, live_pdb) = (
            &live_sa, &live_cm, &live_dep, &live_svc, &live_pvc, &live_pdb,
        );
        async move {
            let name = names::object_name(hub_ctx.name, &svc.name);
            let sa = mark(workload::service_account(hub_ctx, svc));
            let cm = mark(workload::config_map_for(hub_ctx, svc));
            let cm_name = names::config_map(hub_ctx.name, &svc.name);
            futures::try_join!(
                apply(
                    ctx,
                    sa_api,
                    "ServiceAccount",
                    sa,
                    live_sa.get(&name),
                    regarding
                ),
                apply(
                    ctx,
                    cm_api,
                    "ConfigMap",
                    cm,
                    live_cm.get(&cm_name),
                    regarding
                ),
            )?;
            if let Some(pvc) = workload::data_claim_for(hub_ctx, svc) {
                // A claim's spec is immutable once bound: create it, never rewrite it.
                if !live_pvc.contains_key(&names::data_claim(hub_ctx.name, &svc.name)) {
                    apply(
                        ctx,
                        pvc_api,
                        "PersistentVolumeClaim",
                        mark(pvc),
                        None,
                        regarding,
                    )
                    .await?;
                }
            }
            let deployment = mark(workload::deployment(hub_ctx, svc));
            let service = mark(workload::service(hub_ctx, svc));
            futures::try_join!(
                apply(
                    ctx,
                    dep_api,
                    "Deployment",
                    deployment,
                    live_dep.get(&name),
                    regarding
                ),
                apply(
                    ctx,
                    svc_api,
                    "Service",
                    service,
                    live_svc.get(&name),
                    regarding
                ),
            )?;
            if let Some(pdb) =
                workload::pod_disruption_budget(hub_ctx, svc, &ctx.pdb_api.api_version)
            {
                apply(
                    ctx,
                    pdb_api,
                    "PodDisruptionBudget",
                    mark(pdb),
                    live_pdb.get(&name),
                    regarding,
                )
                .await?;
            }
            Ok::<(), Error>(())
        }
    });
    futures::future::try_join_all(per_service).await?;
    let uid = hub.meta().uid.clone().unwrap_or_default();
    prune(
        ctx,
        &dep_api,
        "Deployment",
        &live_dep,
        &keep,
        &uid,
        regarding,
    )
    .await?;
    prune(ctx, &svc_api, "Service", &live_svc, &keep, &uid, regarding).await?;
    prune(
        ctx,
        &sa_api,
        "ServiceAccount",
        &live_sa,
        &keep,
        &uid,
        regarding,
    )
    .await?;
    prune(ctx, &cm_api, "ConfigMap", &live_cm, &keep, &uid, regarding).await?;
    prune(
        ctx,
        &pdb_api,
        "PodDisruptionBudget",
        &live_pdb,
        &keep_pdb,
        &uid,
        regarding,
    )
    .await?;
    // Data claims of removed services are kept (data is never deleted implicitly); they go with the hub.
    if live_pvc.keys().any(|n| {
        !hub_ctx
            .services
            .iter()
            .any(|s| &names::data_claim(hub_ctx.name, &s.name) == n)
    }) {
        info!(hub = %hub_ctx.name, "keeping data claims of removed services");
    }
    Ok(live_dep)
}

/// Label telling which controller owns an object, so that each prunes only its own.
pub const CONTROLLER_LABEL: &str = "meterpark.io/controller";

/// Adds the controller label of the DeviceHub workload objects.
fn mark<K: Resource>(mut obj: K) -> K {
    obj.meta_mut()
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTROLLER_LABEL.into(), "devicehub".into());
    obj
}

/// Writes the status subresource when it changed (a no-op reconcile makes no API write).
async fn write_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    old: &DeviceHubStatus,
    new: DeviceHubStatus,
) -> Result<(), Error> {
    if old == &new {
        return Ok(());
    }
    let api: Api<DeviceHub> = Api::namespaced(ctx.client.clone(), ns);
    super::apply::patch_status(ctx, &api, KIND, name, &new).await?;
    Ok(())
}
