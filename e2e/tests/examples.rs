//! Every manifest in `examples/` is applied as a user would (`kubectl apply -f`), its hubs become
//! Ready, its ServiceACLs Verified and its Meters reach their desired state; then it is removed.

use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::Discovery;
use mpm_e2e::{client, condition, require_cluster, wait_for};

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn every_example_is_applied_and_converges() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no examples in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)?;
        let mut applied = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let obj: DynamicObject = serde_json::from_value(doc)?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{}: object without kind", file.display()))?;
            let (group, version) = types
                .api_version
                .split_once('/')
                .unwrap_or(("", &types.api_version));
            let (ar, caps) = discovery
                .resolve_gvk(&kube::core::GroupVersionKind::gvk(
                    group,
                    version,
                    &types.kind,
                ))
                .ok_or_else(|| {
                    anyhow::anyhow!("{}: unknown kind {}", file.display(), types.kind)
                })?;
            let name = obj.metadata.name.clone().unwrap_or_default();
            let api: Api<DynamicObject> = match caps.scope {
                kube::discovery::Scope::Namespaced => Api::namespaced_with(
                    client.clone(),
                    obj.metadata.namespace.as_deref().unwrap_or("default"),
                    &ar,
                ),
                kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                &name,
                &PatchParams::apply("mpm-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await?;
            applied.push((api, types.kind, name));
        }
        println!("applied {}: {} objects", file.display(), applied.len());
        for (api, kind, name) in &applied {
            let (condition_type, expect) = match kind.as_str() {
                "DeviceHub" => ("Ready", "True"),
                "ServiceACL" => ("Verified", "True"),
                "Meter" => ("Ready", "True"),
                _ => continue,
            };
            wait_for(
                &format!("{kind} {name} {condition_type}={expect}"),
                Duration::from_secs(300),
                || async {
                    let obj = api.get(name).await?;
                    let status = obj.data.get("status").cloned().unwrap_or_default();
                    Ok(condition(&status, condition_type)
                        .filter(|c| c.0 == expect)
                        .map(|_| ()))
                },
            )
            .await?;
        }
        // Remove in reverse order (Meters first, so their finalizers reach device-hub).
        for (api, kind, name) in applied.iter().rev() {
            if kind == "Namespace" {
                continue;
            }
            let _ = api.delete(name, &DeleteParams::default()).await;
            wait_for(
                &format!("{kind} {name} deleted"),
                Duration::from_secs(120),
                || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
            )
            .await?;
        }
        for (api, kind, name) in &applied {
            if kind == "Namespace" {
                let _ = api.delete(name, &DeleteParams::background()).await;
            }
        }
    }
    Ok(())
}
