//! Meters end to end against a real cluster with the operator installed: 100 Meters created with
//! their finalizer already added by the operator's admission webhook, provisioned and
//! deprovisioned (finalizers ran), then Meters created while device-hub is scaled to zero wait and
//! provision themselves once it is back, without duplicated device ids; finally the hub is deleted,
//! its Meters report `HubNotFound` at once and can still be deleted.
//!
//! Runs only with `MPM_E2E=1` (and `KUBECONFIG`); otherwise it prints why it skips and passes.
//! The objects are handled as JSON (dynamic objects) so that this test depends on the CRDs' wire
//! format, not on the operator crate.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::Client;
use mpm_e2e::{client, require_cluster, wait_for, TestNamespace};
use serde_json::{json, Value};

const HUB: &str = "demo";
const FIELD_MANAGER: &str = "mpm-e2e";
const FINALIZER: &str = "meterpark.io/deprovision";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "meterpark.io".into(),
        version: "v1alpha1".into(),
        api_version: "meterpark.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn meters(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource("Meter", "meters"))
}

fn hubs(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource("DeviceHub", "devicehubs"))
}

/// `(status, reason, message)` of a condition in a status object.
fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

fn status_of(obj: &DynamicObject) -> Value {
    obj.data.get("status").cloned().unwrap_or(Value::Null)
}

/// Applies the hub with `services` (server-side apply, our own field manager).
async fn apply_hub(client: &Client, ns: &str, services: Value) -> anyhow::Result<()> {
    let hub: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
        "metadata": {"name": HUB, "namespace": ns},
        "spec": {"services": services}
    }))?;
    hubs(client, ns)
        .patch(
            HUB,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&hub),
        )
        .await
        .with_context(|| format!("applying DeviceHub {ns}/{HUB}"))?;
    Ok(())
}

/// Waits until the hub is Ready and its device-hub runs `replicas` ready pods.
async fn wait_hub(
    client: &Client,
    ns: &str,
    replicas: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = hubs(client, ns);
    wait_for(
        &format!("DeviceHub {ns}/{HUB} Ready with {replicas} device-hub pods"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let status = status_of(&api.get(HUB).await?);
                let ready = matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True");
                let device_hub = status["services"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["name"] == "device-hub"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let pods_ok = device_hub["desiredReplicas"].as_i64() == Some(replicas)
                    && device_hub["readyReplicas"].as_i64().unwrap_or(0) == replicas;
                if ready && pods_ok {
                    Ok(Some(()))
                } else {
                    bail!("hub status: {status}")
                }
            }
        },
    )
    .await
}

fn meter(ns: &str, name: &str, serial: &str) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "Meter",
        "metadata": {"name": name, "namespace": ns, "labels": {"mpm-e2e/batch": name.split('-').next().unwrap_or("m")}},
        "spec": {"hubRef": {"name": HUB}, "serialNumber": serial, "manufacturer": "Landis+Gyr",
                 "model": "E450", "protocol": "DLMS/COSEM", "hesId": "hes-e2e",
                 "location": {"address": "Teststrasse 1", "latitude": 47.37, "longitude": 8.54}}
    }))?)
}

async fn create_meters(
    client: &Client,
    ns: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let api = meters(client, ns);
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i:04}");
        let serial = format!("E2E-{}-{i:04}", prefix.to_uppercase());
        let created = api
            .create(&PostParams::default(), &meter(ns, &name, &serial)?)
            .await
            .with_context(|| format!("creating Meter {ns}/{name}"))?;
        // The operator's admission webhook adds the finalizer in the create itself, so the
        // controller does not spend a write on it.
        anyhow::ensure!(
            created.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER),
            "Meter {ns}/{name} was created without {FINALIZER}: the admission webhook did not answer \
             (finalizers {:?})",
            created.metadata.finalizers
        );
        names.push(name);
    }
    Ok(names)
}

/// Lists the Meters of one batch (label `mpm-e2e/batch=<prefix>`).
async fn list(client: &Client, ns: &str, prefix: &str) -> anyhow::Result<Vec<DynamicObject>> {
    Ok(meters(client, ns)
        .list(&ListParams::default().labels(&format!("mpm-e2e/batch={prefix}")))
        .await?
        .items)
}

/// Waits until all `count` Meters of a batch are Provisioned with a device id; returns name → id.
async fn wait_provisioned(
    client: &Client,
    ns: &str,
    prefix: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    wait_for(
        &format!("{count} Meters {prefix}-* Provisioned"),
        timeout,
        || async move {
            let items = list(client, ns, prefix).await?;
            let mut ids = BTreeMap::new();
            let mut waiting = Vec::new();
            for m in &items {
                let status = status_of(m);
                let id = status["deviceId"].as_str().unwrap_or_default();
                let ready = condition(&status, "Ready");
                if status["phase"] == "Provisioned"
                    && !id.is_empty()
                    && matches!(&ready, Some((s, r, _)) if s == "True" && r == "Provisioned")
                {
                    ids.insert(m.metadata.name.clone().unwrap_or_default(), id.to_string());
                } else {
                    waiting.push(format!(
                        "{}: {} {:?}",
                        m.metadata.name.clone().unwrap_or_default(),
                        status["phase"],
                        ready
                    ));
                }
            }
            if ids.len() == count && items.len() == count {
                Ok(Some(ids))
            } else {
                bail!(
                    "{}/{count} provisioned; waiting: {:?}",
                    ids.len(),
                    waiting.iter().take(5).collect::<Vec<_>>()
                )
            }
        },
    )
    .await
}

async fn delete_all_and_wait(
    client: &Client,
    ns: &str,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = meters(client, ns);
    for m in list(client, ns, prefix).await? {
        let name = m.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting Meter {ns}/{name}")),
        }
    }
    wait_for(
        &format!("Meters {prefix}-* gone (finalizer {FINALIZER} ran)"),
        timeout,
        || async move {
            let left = list(client, ns, prefix).await?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                let stuck: Vec<String> = left
                    .iter()
                    .take(5)
                    .map(|m| {
                        format!(
                            "{} {:?}",
                            m.metadata.name.clone().unwrap_or_default(),
                            condition(&status_of(m), "Ready")
                        )
                    })
                    .collect();
                bail!("{} left, e.g. {stuck:?}", left.len())
            }
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn meters_provision_deprovision_and_survive_a_device_hub_outage() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-meters").await?;
    let result = scenario(&client, &ns.name).await;
    if result.is_ok() {
        ns.delete().await;
    } else {
        eprintln!("keeping namespace {} for inspection", ns.name);
    }
    result
}

async fn scenario(client: &Client, ns: &str) -> anyhow::Result<()> {
    // A minimal hub (the built-in services with defaults); the operator may call device-hub by default.
    apply_hub(client, ns, json!([])).await?;
    wait_hub(client, ns, 1, Duration::from_secs(300)).await?;

    // 100 Meters: all provisioned, each with its own device id, each carrying the finalizer.
    create_meters(client, ns, "bulk", 100).await?;
    let ids = wait_provisioned(client, ns, "bulk", 100, Duration::from_secs(300)).await?;
    let unique: HashSet<&String> = ids.values().collect();
    assert_eq!(unique.len(), 100, "device ids must be unique: {ids:?}");
    for m in list(client, ns, "bulk").await? {
        assert!(
            m.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FINALIZER),
            "{:?} lacks the finalizer",
            m.metadata.name
        );
        let status = status_of(&m);
        assert!(status["provisionedAt"].is_string(), "{status}");
        assert_eq!(status["hubState"], "Provisioned", "{status}");
    }

    // The leader exports them by phase, counted from its cache.
    let series = format!("mpm_operator_meters{{namespace=\"{ns}\",phase=\"Provisioned\"}}");
    wait_for(
        "mpm_operator_meters counts the 100",
        Duration::from_secs(30),
        || async {
            let text = mpm_e2e::leader_metrics(client).await?;
            Ok((mpm_e2e::metric(&text, &series) == Some(100.0)).then_some(()))
        },
    )
    .await?;

    // Deleting them runs the finalizers (DELETE in device-hub) and the objects go away.
    delete_all_and_wait(client, ns, "bulk", Duration::from_secs(300)).await?;

    // device-hub down: new Meters wait (Pending or Provisioning, HubNotReady or HubUnavailable).
    apply_hub(client, ns, json!([{"name": "device-hub", "replicas": 0}])).await?;
    wait_hub(client, ns, 0, Duration::from_secs(180)).await?;
    create_meters(client, ns, "outage", 10).await?;
    let waiting = |client: Client, ns: String| async move {
        let items = list(&client, &ns, "outage").await?;
        let mut ok = 0;
        for m in &items {
            let status = status_of(m);
            if status["phase"] == "Provisioned" {
                bail!(
                    "{:?} provisioned while device-hub is down: {status}",
                    m.metadata.name
                );
            }
            let pending = matches!(status["phase"].as_str(), Some("Pending" | "Provisioning"));
            let why = condition(&status, "Ready").is_some_and(|(s, r, _)| {
                s == "False" && (r == "HubNotReady" || r == "HubUnavailable")
            });
            if pending && why {
                ok += 1;
            }
        }
        anyhow::Ok(ok == 10 && items.len() == 10)
    };
    wait_for(
        "10 Meters waiting for device-hub",
        Duration::from_secs(120),
        || {
            let (c, n) = (client.clone(), ns.to_string());
            async move { Ok(waiting(c, n).await?.then_some(())) }
        },
    )
    .await?;
    // They keep waiting for a while (and back off rather than provision anything).
    tokio::time::sleep(Duration::from_secs(20)).await;
    if !waiting(client.clone(), ns.to_string()).await? {
        bail!("Meters stopped waiting while device-hub was still down");
    }

    // device-hub back: the Meters provision by themselves, nothing duplicated.
    apply_hub(client, ns, json!([{"name": "device-hub", "replicas": 1}])).await?;
    let ids = wait_provisioned(client, ns, "outage", 10, Duration::from_secs(360)).await?;
    let unique: HashSet<&String> = ids.values().collect();
    assert_eq!(unique.len(), 10, "device ids must be unique: {ids:?}");
    let serials: HashSet<String> = list(client, ns, "outage")
        .await?
        .iter()
        .filter_map(|m| m.data["spec"]["serialNumber"].as_str().map(str::to_string))
        .collect();
    assert_eq!(serials.len(), 10);

    // The hub deleted: its Meters say so promptly (the periodic resync is 10 minutes away), and
    // deleting them afterwards is not blocked by a device-hub that no longer exists.
    hubs(client, ns)
        .delete(HUB, &DeleteParams::default())
        .await
        .context("deleting the hub")?;
    wait_for(
        "10 Meters report HubNotFound",
        Duration::from_secs(90),
        || async {
            let items = list(client, ns, "outage").await?;
            let not_found = items
                .iter()
                .filter(|m| {
                    condition(&status_of(m), "Ready")
                        .is_some_and(|(s, r, _)| s == "False" && r == "HubNotFound")
                })
                .count();
            Ok((not_found == 10).then_some(()))
        },
    )
    .await?;
    delete_all_and_wait(client, ns, "outage", Duration::from_secs(300)).await?;
    Ok(())
}
