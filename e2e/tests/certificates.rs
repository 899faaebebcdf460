//! Certificates end to end: leaf renewal without pod restarts, CA rotation on demand under traffic
//! with zero failed requests, and an operator restart in the middle of a CA rotation.
//!
//! Leaves use the shortest allowed lifetime (`duration: 10m`) with `renewBefore: 9m`, so a leaf is
//! renewed well under a minute after issuance (the jitter of the schedule is at most a tenth of
//! `renewBefore`, and the operator never renews a leaf younger than 20 s).
//!
//! CA rotation completion: after the switch to the new CA the old CA stays trusted for the longest
//! leaf lifetime plus the 5 min skew (15 min with 10m leaves). By default the rotation tests accept
//! as "done" the phase `OldCARetiring`: signing switched to the new CA (status role `Signing`),
//! every leaf reissued by it, the old CA still `Trusted`. With `MPM_E2E_FULL_ROTATION=1` they also
//! wait (up to 20 min) for the drop of the old CA and the promotion (`CARotationInProgress`
//! False, bundle = new CA only, `<hub>-ca` = new CA, `<hub>-ca-next` gone).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use mpm_e2e::{
    client, condition, create, create_ingest_token, ingest_call, require_cluster, wait_for,
    TestNamespace, OPERATOR_NAMESPACE,
};
use mpm_operator::controller::rotation::bundle_fingerprints;
use mpm_operator::crd::DeviceHub;
use mpm_operator::pki;
use serde_json::json;

const HUB: &str = "demo";

fn full_rotation() -> bool {
    std::env::var("MPM_E2E_FULL_ROTATION").is_ok_and(|v| v == "1")
}

async fn hub_status(api: &Api<DeviceHub>) -> anyhow::Result<serde_json::Value> {
    let hub = api.get(HUB).await?;
    Ok(serde_json::to_value(hub.status)?)
}

/// A hub with short-lived leaves and an ACL allowing connector → device-hub events.
async fn create_hub(client: &Client, ns: &str) -> anyhow::Result<serde_json::Value> {
    // The HES authenticates on the ingest port with a bearer token from a Secret.
    let hes = create_ingest_token(client, ns).await?;
    create::<DeviceHub>(
        client,
        ns,
        json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
            "metadata": {"name": HUB},
            "spec": {"certificates": {"duration": "10m", "renewBefore": "9m"}, "hes": hes}
        }),
    )
    .await?;
    create::<mpm_operator::crd::ServiceACL>(
        client,
        ns,
        json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "ServiceACL",
            "metadata": {"name": HUB},
            "spec": {"hubRef": {"name": HUB}, "defaultAction": "Deny",
                     "allow": [{"name": "events", "from": "iec61968-connector", "to": "device-hub",
                                "http": {"methods": ["POST"], "pathPrefixes": ["/v1/events"]}}]}
        }),
    )
    .await?;
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    wait_for("DeviceHub Ready", Duration::from_secs(240), || async {
        let status = hub_status(&hubs).await?;
        Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(status))
    })
    .await
}

fn secret_cert(secret: &Secret) -> Option<&str> {
    std::str::from_utf8(&secret.data.as_ref()?.get("tls.crt")?.0).ok()
}

async fn secret_serial(secrets: &Api<Secret>, name: &str) -> anyhow::Result<String> {
    let s = secrets.get(name).await?;
    let pem = secret_cert(&s).context("no tls.crt")?;
    Ok(pki::inspect_cert(pem)?.serial_hex)
}

fn status_serial(status: &serde_json::Value, svc: &str) -> Option<String> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == svc)?["certificate"]["serial"]
        .as_str()
        .map(str::to_owned)
}

/// (uid, restartCount) of every pod of the hub, by name.
async fn pods_of_hub(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, (String, i32)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("meterpark.io/hub={HUB}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (
                p.metadata.name.unwrap_or_default(),
                (p.metadata.uid.unwrap_or_default(), restarts),
            )
        })
        .collect())
}

async fn pod_status(client: &Client, ns: &str, pod: &str) -> anyhow::Result<serde_json::Value> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/status");
    let text = client
        .request_text(http::Request::get(path).body(Vec::new())?)
        .await?;
    Ok(serde_json::from_str(&text)?)
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn leaf_renewal_keeps_pods() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-cert-renew").await?;
    let result = leaf_renewal(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn leaf_renewal(client: &Client, ns: &str) -> anyhow::Result<()> {
    let status = create_hub(client, ns).await?;
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    // Let every rollout settle, then take the baseline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods_before = pods_of_hub(client, ns).await?;
    let first = status_serial(&status, "device-hub").context("no device-hub serial in status")?;
    println!("device-hub serial {first}, pods {pods_before:?}");
    let renewed = wait_for(
        "device-hub leaf renewed",
        Duration::from_secs(180),
        || async {
            let status = hub_status(&hubs).await?;
            let serial = status_serial(&status, "device-hub");
            let stored = secret_serial(&secrets, &format!("{HUB}-device-hub-tls")).await?;
            Ok(serial
                .filter(|s| s != &first && s == &stored)
                .map(|s| (s, status["services"].clone())))
        },
    )
    .await?;
    println!("renewed: serial {} (status {})", renewed.0, renewed.1);
    // The pods load the new certificate in place: /status reports a renewed serial.
    let device_hub_pods: Vec<String> = pods_before
        .keys()
        .filter(|p| p.starts_with(&format!("{HUB}-device-hub-")))
        .cloned()
        .collect();
    for pod in &device_hub_pods {
        wait_for(
            &format!("{pod} serves a renewed certificate"),
            Duration::from_secs(150),
            || async {
                let s = pod_status(client, ns, pod).await?;
                let serial = s["certificateSerial"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                Ok((!serial.is_empty() && serial != first).then_some(serial))
            },
        )
        .await?;
    }
    let pods_after = pods_of_hub(client, ns).await?;
    assert_eq!(
        pods_before, pods_after,
        "leaf renewal must not restart or replace pods"
    );
    Ok(())
}

/// Posts one event per call to the connector's ingest port (with the HES's token, through a
/// port-forward); the connector forwards it to device-hub over mTLS. Counts requests and failures
/// (transport errors, non-2xx answers, dead-lettered or unforwarded events).
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
}

async fn traffic_loop(client: Client, ns: String, traffic: Arc<Traffic>) {
    let mut i = 0u64;
    while !traffic.stop.load(Ordering::Relaxed) {
        i += 1;
        let event = json!({"kind": "reading", "serialNumber": "E2E-ROT-0001",
                           "timestamp": chrono::Utc::now().to_rfc3339(),
                           "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": i as f64, "unit": "kWh"});
        let result = async {
            let v = post_event(&client, &ns, &event).await?;
            if v["forwarded"] != 1 || v["deadLettered"] != 0 {
                bail!("connector answered {v}");
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                traffic.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                traffic.failed.fetch_add(1, Ordering::Relaxed);
                let msg = format!("{} request {i}: {e:#}", chrono::Utc::now().to_rfc3339());
                eprintln!("traffic failure: {msg}");
                if let Ok(mut f) = traffic.failures.lock() {
                    f.push(msg);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `POST /ingest` of one JSON event as the HES: the connector's answer (`202` required).
async fn post_event(
    client: &Client,
    ns: &str,
    event: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = ingest_call(
        client,
        ns,
        HUB,
        "POST",
        "/ingest",
        "application/json",
        &serde_json::to_vec(event)?,
        None,
    )
    .await?;
    if status != 202 {
        bail!("connector answered {status}: {body}");
    }
    Ok(serde_json::from_str(body.trim())?)
}

/// Every CA fingerprint visible in the hub's CA Secrets, trust bundle and status.
async fn ca_fingerprints(
    client: &Client,
    ns: &str,
) -> anyhow::Result<(BTreeSet<String>, Vec<String>)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut seen = BTreeSet::new();
    for name in [format!("{HUB}-ca"), format!("{HUB}-ca-next")] {
        if let Some(s) = secrets.get_opt(&name).await? {
            if let Some(pem) = secret_cert(&s) {
                seen.insert(pki::cert_fingerprint(pem)?);
            }
        }
    }
    let bundle = cms
        .get_opt(&format!("{HUB}-trust-bundle"))
        .await?
        .and_then(|cm| cm.data?.get("ca-bundle.pem").cloned())
        .and_then(|text| bundle_fingerprints(&text))
        .unwrap_or_default();
    seen.extend(bundle.iter().cloned());
    Ok((seen, bundle))
}

fn authorities(status: &serde_json::Value) -> Vec<(String, String)> {
    status["certificateAuthorities"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["fingerprint"].as_str().unwrap_or_default().to_string(),
                        c["role"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets a new rotation token and waits until signing switched to a new CA and every leaf is
/// reissued by it (and, with `MPM_E2E_FULL_ROTATION=1`, until the rotation completed).
/// `mid_rotation` runs once the rotation is in progress. Returns (old, new) fingerprints.
async fn rotate<F, Fut>(
    client: &Client,
    ns: &str,
    token: &str,
    mid_rotation: F,
) -> anyhow::Result<(String, String)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let status = hub_status(&hubs).await?;
    let old = match authorities(&status).as_slice() {
        [(fp, role)] if role == "Signing" => fp.clone(),
        other => bail!("expected one signing CA before the rotation, got {other:?}"),
    };
    hubs.patch(
        HUB,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"certificates": {"ca": {"rotationToken": token}}}})),
    )
    .await?;
    let started = wait_for(
        "CARotationInProgress True",
        Duration::from_secs(60),
        || async {
            let status = hub_status(&hubs).await?;
            Ok(condition(&status, "CARotationInProgress").filter(|c| c.0 == "True"))
        },
    )
    .await?;
    println!("rotation in progress: {started:?}");
    mid_rotation().await?;

    // Switched and reissued: the new CA signs, the old one is still trusted, every leaf is
    // signed by the new CA.
    let new = wait_for(
        "signing switched to the new CA",
        Duration::from_secs(420),
        || async {
            let status = hub_status(&hubs).await?;
            let cas = authorities(&status);
            let Some((new, _)) = cas
                .iter()
                .find(|(fp, role)| role == "Signing" && fp != &old)
            else {
                return Ok(None);
            };
            let reason = condition(&status, "CARotationInProgress")
                .map(|c| c.1)
                .unwrap_or_default();
            let done = reason == "OldCARetiring" || reason == "Idle";
            Ok(done.then(|| new.clone()))
        },
    )
    .await?;
    let next = secrets.get(&format!("{HUB}-ca-next")).await.ok();
    let new_ca_pem = match next.as_ref().and_then(secret_cert) {
        Some(pem) => pem.to_string(),
        None => secret_cert(&secrets.get(&format!("{HUB}-ca")).await?)
            .context("no CA certificate")?
            .to_string(),
    };
    assert_eq!(
        pki::cert_fingerprint(&new_ca_pem)?,
        new,
        "the signing CA is <hub>-ca-next"
    );
    let leaves = secrets
        .list(&ListParams::default().labels(&format!(
            "meterpark.io/hub={HUB},meterpark.io/controller=certificates"
        )))
        .await?;
    for s in leaves.items.iter().filter(|s| {
        s.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with("-tls"))
    }) {
        let pem = secret_cert(s).context("leaf without tls.crt")?;
        assert_eq!(
            pki::identify_issuer(pem, &[&new_ca_pem]).as_deref(),
            Some(new.as_str()),
            "leaf {:?} signed by the new CA",
            s.metadata.name
        );
    }
    println!("signing switched from {old} to {new}; every leaf reissued");

    if full_rotation() {
        wait_for(
            "CA rotation completed",
            Duration::from_secs(20 * 60),
            || async {
                let status = hub_status(&hubs).await?;
                let idle =
                    condition(&status, "CARotationInProgress").is_some_and(|c| c.0 == "False");
                let cas = authorities(&status);
                Ok((idle && cas == [(new.clone(), "Signing".to_string())]).then_some(()))
            },
        )
        .await?;
        let (_, bundle) = ca_fingerprints(client, ns).await?;
        assert_eq!(bundle, vec![new.clone()], "old CA dropped from the bundle");
        let current = secrets.get(&format!("{HUB}-ca")).await?;
        assert_eq!(
            pki::cert_fingerprint(secret_cert(&current).context("no tls.crt")?)?,
            new
        );
        assert!(
            secrets.get_opt(&format!("{HUB}-ca-next")).await?.is_none(),
            "<hub>-ca-next deleted"
        );
        println!("rotation completed: old CA dropped, new CA promoted");
    } else {
        let status = hub_status(&hubs).await?;
        let cas = authorities(&status);
        assert!(
            cas.contains(&(old.clone(), "Trusted".to_string())),
            "old CA still trusted: {cas:?}"
        );
    }
    Ok((old, new))
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn ca_rotation_under_traffic() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-cert-rotate").await?;
    let result = rotation_under_traffic(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn rotation_under_traffic(client: &Client, ns: &str) -> anyhow::Result<()> {
    create_hub(client, ns).await?;
    let traffic = Arc::new(Traffic {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
    });
    // The ACL reaches the pods through the kubelet's volume sync: wait until events flow.
    wait_for("connector forwards events", Duration::from_secs(180), || async {
        let event = json!({"kind": "reading", "serialNumber": "E2E-ROT-0000",
                           "timestamp": chrono::Utc::now().to_rfc3339(),
                           "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": 1.0, "unit": "kWh"});
        let v = post_event(client, ns, &event).await?;
        Ok((v["forwarded"] == 1).then_some(()))
    })
    .await?;
    let task = tokio::spawn(traffic_loop(
        client.clone(),
        ns.to_string(),
        traffic.clone(),
    ));
    let rotated = rotate(client, ns, "e2e-rotation-1", || async { Ok(()) }).await;
    // Keep calling while the pods load their reissued leaves.
    if rotated.is_ok() {
        tokio::time::sleep(Duration::from_secs(90)).await;
    }
    traffic.stop.store(true, Ordering::Relaxed);
    task.await?;
    let (old, new) = rotated?;
    let (ok, failed) = (
        traffic.ok.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
    );
    println!("rotation {old} -> {new}: {ok} requests forwarded, {failed} failed");
    let failures = traffic
        .failures
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    assert_eq!(
        failed, 0,
        "failed requests during the rotation: {failures:#?}"
    );
    assert!(ok > 100, "too little traffic to prove anything: {ok}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn ca_rotation_survives_operator_restart() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-cert-restart").await?;
    let result = rotation_with_restart(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn rotation_with_restart(client: &Client, ns: &str) -> anyhow::Result<()> {
    create_hub(client, ns).await?;
    // Sample every CA fingerprint visible over the whole test.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (client, ns, seen, stop) = (client.clone(), ns.to_string(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((fps, _)) = ca_fingerprints(&client, &ns).await {
                    if let Ok(mut s) = seen.lock() {
                        s.extend(fps);
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let restart = || async {
        let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let leader = leases
            .get("mpm-operator-leader")
            .await?
            .spec
            .and_then(|s| s.holder_identity)
            .context("the leader Lease has no holder")?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        println!("deleting the leading operator pod {leader} mid-rotation");
        pods.delete(&leader, &DeleteParams::default()).await?;
        Ok(())
    };
    let rotated = rotate(client, ns, "e2e-restart-1", restart).await;
    // A little longer: a second CA would show up after the takeover.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    let (old, new) = rotated?;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    println!("CA fingerprints seen: {seen:?}");
    assert_eq!(
        seen,
        BTreeSet::from([old, new]),
        "exactly the old and one new CA"
    );
    Ok(())
}
