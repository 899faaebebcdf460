//! ServiceACL I/O for one hub: merge the hub's ServiceACLs, compile them (pure, `crate::acl`) into
//! NetworkPolicies and allowed-peer ConfigMaps, apply them, then verify every NetworkPolicy of the
//! namespace against the ACL (pure, `crate::netpol`) and write each ServiceACL's status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use super::apply::{apply, list_by_name, patch_status, prune};
use super::device_hub::CONTROLLER_LABEL;
use super::{Context, Error};
use crate::acl::{HubTopology, OperatorAccess};
use crate::crd::condition::{merge_conditions, Condition, ConditionStatus};
use crate::crd::device_hub::DeviceHub;
use crate::crd::service_acl::{ServiceACL, ServiceAclSpec, ServiceAclStatus};
use crate::resources::names::{self, hub_selector};
use crate::resources::workload::HubContext;

/// The hub as the ACL compiler sees it.
pub fn topology(ctx: &Context, hub: &DeviceHub, hub_ctx: &HubContext<'_>) -> HubTopology {
    HubTopology::for_services(
        hub_ctx.namespace,
        hub_ctx.name,
        &hub.spec.trust_domain,
        hub_ctx.services,
        OperatorAccess {
            namespace_selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ctx.settings.namespace.clone(),
                )])),
                ..LabelSelector::default()
            },
            pod_selector: LabelSelector {
                match_labels: Some(ctx.settings.pod_labels.clone()),
                ..LabelSelector::default()
            },
        },
    )
}

fn mark<K: Resource>(mut obj: K) -> K {
    obj.meta_mut()
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTROLLER_LABEL.into(), "network".into());
    obj
}

pub async fn reconcile(
    ctx: &Context,
    hub: &DeviceHub,
    hub_ctx: &HubContext<'_>,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<(), Error> {
    let ns = hub_ctx.namespace;
    let acl_api: Api<ServiceACL> = Api::namespaced(ctx.client.clone(), ns);
    wait_for_cache(&ctx.caches.acls, "ServiceACL").await?;
    wait_for_cache(&ctx.caches.policies, "NetworkPolicy").await?;
    // The cache is at least as fresh as the event that triggered this reconcile.
    let acls: Vec<Arc<ServiceACL>> = ctx
        .caches
        .acls
        .state()
        .into_iter()
        .filter(|a| {
            a.namespace().as_deref() == Some(ns)
                && a.spec.hub_ref.name == hub_ctx.name
                && a.meta().deletion_timestamp.is_none()
        })
        .collect();
    let specs: Vec<ServiceAclSpec> = acls.iter().map(|a| a.spec.clone()).collect();
    let topo = topology(ctx, hub, hub_ctx);

    let np_api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!(
        "{},{}=network",
        hub_selector(hub_ctx.name),
        CONTROLLER_LABEL
    );
    // Listed, not cached: applying needs the live managedFields (foreign-manager check).
    let live_np = list_by_name(&np_api, "NetworkPolicy", &selector).await?;
    let mut ours: Vec<NetworkPolicy> = live_np.values().cloned().collect();
    let compile_error = match crate::acl::compile(&topo, &specs) {
        Ok(compiled) => {
            let live_cm = list_by_name(&cm_api, "ConfigMap", &selector).await?;
            ours.clear();
            let mut keep = Vec::new();
            let mut writes = Vec::new();
            for mut policy in compiled.network_policies() {
                let name = policy.name_any();
                policy.metadata.owner_references = Some(vec![hub_ctx.owner.clone()]);
                keep.push(name.clone());
                let live = live_np.get(&name);
                let np_api = &np_api;
                let policy = mark(policy);
                ours.push(policy.clone());
                writes.push(futures::future::Either::Left(async move {
                    apply(ctx, np_api, "NetworkPolicy", policy, live, regarding).await
                }));
            }
            for (service, compiled_service) in &compiled.services {
                let name = names::acl_config_map(hub_ctx.name, service);
                let mut meta = hub_ctx.hub_meta(name.clone());
                if let Some(l) = meta.labels.as_mut() {
                    l.insert(names::LABEL_SERVICE.into(), service.clone());
                }
                let cm = ConfigMap {
                    metadata: meta,
                    data: Some(BTreeMap::from([(
                        names::ALLOWED_PEERS_KEY.to_string(),
                        compiled_service.allowed_peers_json(),
                    )])),
                    ..ConfigMap::default()
                };
                keep.push(name.clone());
                let live = live_cm.get(&name);
                let cm_api = &cm_api;
                writes.push(futures::future::Either::Right(async move {
                    apply(ctx, cm_api, "ConfigMap", mark(cm), live, regarding).await
                }));
            }
            futures::future::try_join_all(writes).await?;
            let uid = hub.meta().uid.clone().unwrap_or_default();
            prune(
                ctx,
                &np_api,
                "NetworkPolicy",
                &live_np,
                &keep,
                &uid,
                regarding,
            )
            .await?;
            prune(ctx, &cm_api, "ConfigMap", &live_cm, &keep, &uid, regarding).await?;
            None
        }
        // The policies in force stay in place: a bad edit never opens the network.
        Err(e) => Some(e.to_string()),
    };

    // Verify what is really in force: every NetworkPolicy of the namespace, ours or not. Ours are
    // taken as just applied (the cache may not have caught up with our own writes yet).
    let all_policies = policies_in_force(&ctx.caches.policies.state(), ns, hub_ctx.name, ours);
    let verification = crate::netpol::verify(&specs, &topo, &all_policies);
    for acl in &acls {
        let generation = acl.meta().generation;
        let old = acl.status.clone().unwrap_or_default();
        let mut status = ServiceAclStatus {
            observed_generation: generation,
            ..ServiceAclStatus::default()
        };
        let mut conditions = Vec::new();
        match (&compile_error, &verification) {
            (Some(message), _) => {
                conditions.push(cond("Ready", false, "InvalidRule", message, generation));
                conditions.push(cond(
                    "Verified",
                    false,
                    "InvalidRule",
                    "the ACL does not compile; previous policies stay in force",
                    generation,
                ));
            }
            (None, Err(e)) => {
                conditions.push(cond(
                    "Ready",
                    true,
                    "Compiled",
                    "NetworkPolicies and allowed peers applied",
                    generation,
                ));
                conditions.push(cond(
                    "Verified",
                    false,
                    "VerificationFailed",
                    &e.to_string(),
                    generation,
                ));
            }
            (None, Ok(v)) => {
                conditions.push(cond(
                    "Ready",
                    true,
                    "Compiled",
                    "NetworkPolicies and allowed peers applied",
                    generation,
                ));
                if v.verified() {
                    conditions.push(cond(
                        "Verified",
                        true,
                        "MatrixMatchesACL",
                        "effective reachability equals the ACL",
                        generation,
                    ));
                } else {
                    let message = v
                        .violations
                        .iter()
                        .map(|x| format!("rule {}: {}", x.rule, x.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    conditions.push(cond(
                        "Verified",
                        false,
                        "PolicyViolation",
                        &message,
                        generation,
                    ));
                }
                status.matrix = v.matrix.clone();
                status.violations = v.violations.clone();
                status.allowed_edges = v.allowed_edges;
            }
        }
        status.conditions = merge_conditions(&old.conditions, conditions);
        if status != old {
            if let Some(c) = status
                .conditions
                .iter()
                .find(|c| c.status == ConditionStatus::False)
            {
                let changed = old
                    .conditions
                    .iter()
                    .find(|o| o.type_ == c.type_)
                    .map(|o| (&o.reason, &o.message))
                    != Some((&c.reason, &c.message));
                if changed {
                    ctx.publish(
                        &acl.object_ref(&()),
                        EventType::Warning,
                        &c.reason,
                        "Verify",
                        c.message.clone(),
                    )
                    .await;
                }
            }
            patch_status(ctx, &acl_api, "ServiceACL", &acl.name_any(), &status).await?;
        }
    }
    Ok(())
}

/// Which hub's network reconcile owns this NetworkPolicy, if any: our managed-by label, the
/// network controller label and the hub label together.
pub fn managing_hub(meta: &ObjectMeta) -> Option<&str> {
    let labels = meta.labels.as_ref()?;
    let ours = labels.get(names::LABEL_MANAGED_BY).map(String::as_str)
        == Some(names::FIELD_MANAGER)
        && labels.get(CONTROLLER_LABEL).map(String::as_str) == Some("network");
    ours.then(|| labels.get(names::LABEL_HUB).map(String::as_str))
        .flatten()
}

/// The NetworkPolicies in force in `namespace` once `hub`'s own policies are `ours`: every cached
/// policy of the namespace except the cached copies of the hub's own.
pub fn policies_in_force(
    cached: &[Arc<NetworkPolicy>],
    namespace: &str,
    hub: &str,
    ours: Vec<NetworkPolicy>,
) -> Vec<NetworkPolicy> {
    cached
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| managing_hub(&p.metadata) != Some(hub))
        .map(|p| p.as_ref().clone())
        .chain(ours)
        .collect()
}

async fn wait_for_cache<K>(store: &Store<K>, kind: &'static str) -> Result<(), Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    if crate::runtime::cache_ready::wait_ready(store, CACHE_WAIT).await {
        Ok(())
    } else {
        Err(Error::CacheNotReady(kind, CACHE_WAIT))
    }
}

const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn cond(type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    let status = if ok {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Condition::new(
        type_,
        status,
        reason,
        message.chars().take(30_000).collect::<String>(),
        generation,
    )
}

/// Status of a ServiceACL whose hub does not exist.
pub async fn report_missing_hub(ctx: &Context, acl: &ServiceACL) -> Result<(), Error> {
    let ns = acl.namespace().ok_or(Error::MissingMetadata)?;
    let generation = acl.meta().generation;
    let old = acl.status.clone().unwrap_or_default();
    let message = format!(
        "spec.hubRef: DeviceHub {:?} not found in namespace {ns}",
        acl.spec.hub_ref.name
    );
    let status = ServiceAclStatus {
        observed_generation: generation,
        conditions: merge_conditions(
            &old.conditions,
            vec![
                cond("Ready", false, "HubNotFound", &message, generation),
                cond("Verified", false, "HubNotFound", &message, generation),
            ],
        ),
        ..ServiceAclStatus::default()
    };
    if status == old {
        return Ok(());
    }
    ctx.publish(
        &acl.object_ref(&()),
        EventType::Warning,
        "HubNotFound",
        "Resolve",
        message,
    )
    .await;
    let api: Api<ServiceACL> = Api::namespaced(ctx.client.clone(), &ns);
    patch_status(ctx, &api, "ServiceACL", &acl.name_any(), &status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ns: &str, name: &str, labels: &[(&str, &str)]) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..NetworkPolicy::default()
        }
    }

    fn managed(ns: &str, name: &str, hub: &str) -> NetworkPolicy {
        policy(
            ns,
            name,
            &[
                (names::LABEL_HUB, hub),
                (names::LABEL_MANAGED_BY, names::FIELD_MANAGER),
                (CONTROLLER_LABEL, "network"),
            ],
        )
    }

    #[test]
    fn only_our_network_policies_name_a_managing_hub() {
        assert_eq!(managing_hub(&managed("a", "p", "h1").metadata), Some("h1"));
        // Hand-written, even with our hub label: every hub of the namespace must re-verify.
        let forged = policy("a", "p", &[(names::LABEL_HUB, "h1")]);
        assert_eq!(managing_hub(&forged.metadata), None);
        let other_controller = policy(
            "a",
            "p",
            &[
                (names::LABEL_HUB, "h1"),
                (names::LABEL_MANAGED_BY, names::FIELD_MANAGER),
                (CONTROLLER_LABEL, "devicehub"),
            ],
        );
        assert_eq!(managing_hub(&other_controller.metadata), None);
        assert_eq!(managing_hub(&ObjectMeta::default()), None);
    }

    #[test]
    fn policies_in_force_replace_the_cached_copies_of_our_own() {
        let cached: Vec<Arc<NetworkPolicy>> = vec![
            Arc::new(managed("a", "h1-old", "h1")),
            Arc::new(managed("a", "h2-deny", "h2")),
            Arc::new(policy("a", "allow-all", &[])),
            Arc::new(policy("b", "elsewhere", &[])),
        ];
        let ours = vec![managed("a", "h1-new", "h1")];
        let mut names: Vec<String> = policies_in_force(&cached, "a", "h1", ours)
            .iter()
            .map(|p| p.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["allow-all", "h1-new", "h2-deny"]);
    }
}
