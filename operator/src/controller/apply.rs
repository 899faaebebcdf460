//! Server-side apply with one field manager, skipping writes that would change nothing, and pruning
//! of objects a hub no longer declares. Every write is rate limited, counted and recorded as an Event.

use std::collections::BTreeMap;
use std::fmt::Debug;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Context, Error};
use crate::resources::names::FIELD_MANAGER;

/// Annotation holding the hash of what the operator last applied: if the live object carries the same
/// hash and nobody else owns its spec fields, applying again would change nothing and is skipped.
pub const DESIRED_HASH: &str = "meterpark.io/desired-hash";

/// What one apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// Whether the live object needs an apply: absent, different desired state, or fields of ours
/// taken over by another manager (for example `kubectl edit` or `kubectl scale`).
pub fn needs_apply(live: Option<&ObjectMeta>, hash: &str) -> bool {
    let Some(meta) = live else { return true };
    if meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESIRED_HASH))
        .map(String::as_str)
        != Some(hash)
    {
        return true;
    }
    meta.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() != Some(FIELD_MANAGER)
            && entry.subresource.as_deref() != Some("status")
            && entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.as_object())
                .is_some_and(|fields| fields.keys().any(|k| k != "f:status" && k != "f:metadata"))
    })
}

/// SHA-256 of the desired object's JSON (without the hash annotation itself).
pub fn desired_hash<K: Serialize>(obj: &K) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// Applies `desired` unless `live` shows it is already in place.
pub async fn apply<K>(
    ctx: &Context,
    api: &Api<K>,
    kind: &str,
    mut desired: K,
    live: Option<&K>,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<Change, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let hash = desired_hash(&desired);
    if !needs_apply(live.map(|l| l.meta()), &hash) {
        return Ok(Change::Unchanged);
    }
    let name = desired.meta().name.clone().unwrap_or_default();
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DESIRED_HASH.to_string(), hash);
    ctx.limiter.acquire().await;
    ctx.metrics.write(kind, "apply");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: kind.to_string(),
        name: name.clone(),
        source,
    })?;
    let change = if live.is_some() {
        Change::Updated
    } else {
        Change::Created
    };
    let (reason, verb) = match change {
        Change::Created => ("Created", "created"),
        _ => ("Updated", "updated"),
    };
    ctx.publish(
        regarding,
        EventType::Normal,
        reason,
        "Apply",
        format!("{verb} {kind} {name}"),
    )
    .await;
    Ok(change)
}

/// Lists the objects of one kind carrying `selector`, by name.
pub async fn list_by_name<K>(
    api: &Api<K>,
    kind: &str,
    selector: &str,
) -> Result<BTreeMap<String, K>, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| Error::List {
            kind: kind.to_string(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| Some((o.meta().name.clone()?, o)))
        .collect())
}

/// Deletes objects controlled by `owner_uid` whose names are not in `keep`.
pub async fn prune<K>(
    ctx: &Context,
    api: &Api<K>,
    kind: &str,
    live: &BTreeMap<String, K>,
    keep: &[String],
    owner_uid: &str,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<usize, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let mut pruned = 0;
    for (name, obj) in live {
        let owned = obj
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        if keep.contains(name) || !owned || obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        ctx.limiter.acquire().await;
        ctx.metrics.write(kind, "delete");
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(source) => {
                return Err(Error::Delete {
                    kind: kind.to_string(),
                    name: name.clone(),
                    source,
                })
            }
        }
        pruned += 1;
        ctx.publish(
            regarding,
            EventType::Normal,
            "Deleted",
            "Prune",
            format!("deleted {kind} {name}: no longer declared"),
        )
        .await;
    }
    Ok(pruned)
}

/// Writes an object's status subresource with a merge patch (rate limited and counted). Callers
/// skip the call when the status did not change, so a quiet reconcile makes no write.
pub async fn patch_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    kind: &str,
    name: &str,
    status: &S,
) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    ctx.limiter.acquire().await;
    ctx.metrics.write(&format!("{kind}/status"), "patch");
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::Status {
        kind: kind.to_string(),
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

impl Context {
    /// Queues an Event (published in the background; failures are logged, never fatal).
    pub async fn publish(
        &self,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        self.events.send(event, regarding.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    fn meta(hash: &str, managers: Vec<(&str, serde_json::Value)>) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(BTreeMap::from([(
                DESIRED_HASH.to_string(),
                hash.to_string(),
            )])),
            managed_fields: Some(
                managers
                    .into_iter()
                    .map(|(m, f)| ManagedFieldsEntry {
                        manager: Some(m.to_string()),
                        fields_v1: Some(FieldsV1(f)),
                        ..ManagedFieldsEntry::default()
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn skips_only_when_hash_matches_and_nobody_else_owns_spec_fields() {
        assert!(needs_apply(None, "h"));
        let ours = meta("h", vec![(FIELD_MANAGER, json!({"f:spec": {}}))]);
        assert!(!needs_apply(Some(&ours), "h"));
        assert!(needs_apply(Some(&ours), "other"));
        let status_only = meta(
            "h",
            vec![
                (FIELD_MANAGER, json!({"f:spec": {}})),
                (
                    "kube-controller-manager",
                    json!({"f:status": {}, "f:metadata": {}}),
                ),
            ],
        );
        assert!(!needs_apply(Some(&status_only), "h"));
        let edited = meta(
            "h",
            vec![
                (FIELD_MANAGER, json!({"f:spec": {}})),
                ("kubectl-edit", json!({"f:spec": {"f:replicas": {}}})),
            ],
        );
        assert!(needs_apply(Some(&edited), "h"));
    }

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        let a = json!({"a": 1});
        assert_eq!(desired_hash(&a), desired_hash(&json!({"a": 1})));
        assert_ne!(desired_hash(&a), desired_hash(&json!({"a": 2})));
    }
}
