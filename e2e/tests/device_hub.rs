//! DeviceHub end to end: provisioning, scaling, pruning, self-healing, certificates, deletion and
//! bad input, against the operator installed by the Helm chart.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use mpm_e2e::{client, condition, create, require_cluster, wait_for, TestNamespace, VERSION};
use mpm_operator::crd::DeviceHub;
use serde_json::json;

const SERVICES: [&str; 3] = ["iec61968-connector", "device-hub", "smoc-service"];

async fn hub_status(api: &Api<DeviceHub>, name: &str) -> anyhow::Result<serde_json::Value> {
    let hub = api.get(name).await?;
    Ok(serde_json::to_value(hub.status)?)
}

async fn wait_ready(
    api: &Api<DeviceHub>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    wait_for(&format!("DeviceHub {name} Ready"), timeout, || async {
        let status = hub_status(api, name).await?;
        Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(status))
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn hub_lifecycle() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-hub").await?;
    let result = lifecycle(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn lifecycle(client: &Client, ns: &str) -> anyhow::Result<()> {
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    // A minimal hub plus one declared extra service (a BFF), which is later removed.
    let bff = json!({"name": "bff", "image": format!("localhost/mpm-services:{VERSION}"),
                     "command": ["/usr/local/bin/device-hub"]});
    create::<DeviceHub>(
        client,
        ns,
        json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
            "metadata": {"name": "demo"},
            "spec": {"services": [bff]}
        }),
    )
    .await?;
    let status = wait_ready(&hubs, "demo", Duration::from_secs(240)).await?;
    assert_eq!(status["readyServices"], "4/4", "{status}");
    assert_eq!(
        condition(&status, "CertificatesReady")
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    // No spec.hes.auth: the ingest port is closed, and the hub says so (naming the field).
    let ingest = condition(&status, "IngestAuthenticated").unwrap_or_default();
    assert_eq!(
        (ingest.0.as_str(), ingest.1.as_str()),
        ("False", "NotConfigured"),
        "{status}"
    );
    assert!(ingest.2.contains("spec.hes.auth"), "{status}");

    // Every object of every service exists, owned by the hub.
    let uid = hubs.get("demo").await?.metadata.uid.unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    for svc in SERVICES.iter().chain(["bff"].iter()) {
        let name = format!("demo-{svc}");
        let d = deployments.get(&name).await?;
        assert!(
            d.metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.uid == uid),
            "{name} owned by the hub"
        );
        let pod = d.spec.unwrap().template.spec.unwrap();
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        services.get(&name).await?;
        accounts.get(&name).await?;
        config_maps.get(&format!("demo-{svc}-config")).await?;
        let tls = secrets.get(&format!("demo-{svc}-tls")).await?;
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        policies.get(&format!("demo-{svc}-default-deny")).await?;
    }
    config_maps.get("demo-trust-bundle").await?;
    secrets.get("demo-ca").await?;
    // The CA key stays in its Secret: not in status or events.
    let events = client
        .request_text(
            http::Request::get(format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
                .body(Vec::new())?,
        )
        .await?;
    assert!(!events.contains("PRIVATE KEY") && !status.to_string().contains("PRIVATE KEY"));

    // Scale a service: replicas follow and a PodDisruptionBudget appears (API version from discovery).
    hubs.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"services": [bff, {"name": "device-hub", "replicas": 2}]}})),
    )
    .await?;
    wait_for(
        "device-hub scaled to 2 ready replicas",
        Duration::from_secs(180),
        || async {
            let d = deployments.get("demo-device-hub").await?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready == 2).then_some(()))
        },
    )
    .await?;
    let pdb_path = |version: &str| {
        format!("/apis/policy/{version}/namespaces/{ns}/poddisruptionbudgets/demo-device-hub")
    };
    let pdb_v1 = client
        .request_text(http::Request::get(pdb_path("v1")).body(Vec::new())?)
        .await;
    let pdb_beta = client
        .request_text(http::Request::get(pdb_path("v1beta1")).body(Vec::new())?)
        .await;
    assert!(
        pdb_v1.is_ok() || pdb_beta.is_ok(),
        "PodDisruptionBudget for device-hub"
    );

    // A hand-deleted Service comes back.
    let before = services.get("demo-smoc-service").await?.metadata.uid;
    services
        .delete("demo-smoc-service", &DeleteParams::default())
        .await?;
    wait_for(
        "demo-smoc-service restored",
        Duration::from_secs(60),
        || async {
            Ok(services
                .get_opt("demo-smoc-service")
                .await?
                .filter(|s| s.metadata.uid != before && s.metadata.deletion_timestamp.is_none())
                .map(|_| ()))
        },
    )
    .await?;

    // A hand-edited Deployment is restored.
    deployments
        .patch(
            "demo-smoc-service",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    wait_for(
        "demo-smoc-service replicas restored to 1",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("demo-smoc-service").await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(1)).then_some(()))
        },
    )
    .await?;

    // Removing a service from the spec prunes its objects.
    hubs.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"services": [{"name": "device-hub", "replicas": 2}]}})),
    )
    .await?;
    wait_for("bff pruned", Duration::from_secs(60), || async {
        let gone = deployments.get_opt("demo-bff").await?.is_none()
            && services.get_opt("demo-bff").await?.is_none()
            && accounts.get_opt("demo-bff").await?.is_none()
            && config_maps.get_opt("demo-bff-config").await?.is_none()
            && secrets.get_opt("demo-bff-tls").await?.is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    wait_ready(&hubs, "demo", Duration::from_secs(120)).await?;

    // Deleting the hub removes everything it owns.
    hubs.delete("demo", &DeleteParams::foreground()).await?;
    wait_for(
        "hub objects garbage-collected",
        Duration::from_secs(120),
        || async {
            let left = deployments.list(&Default::default()).await?.items.len()
                + services.list(&Default::default()).await?.items.len()
                + secrets
                    .list(&kube::api::ListParams::default().labels("meterpark.io/hub=demo"))
                    .await?
                    .items
                    .len();
            Ok((left == 0 && hubs.get_opt("demo").await?.is_none()).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn bad_input_gets_a_condition_or_is_rejected() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-bad").await?;
    let result = bad_input(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn invalid_spec(api: &Api<DeviceHub>, name: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{name} Ready=False InvalidSpec"),
        Duration::from_secs(60),
        || async {
            let status = hub_status(api, name).await?;
            Ok(condition(&status, "Ready")
                .filter(|(s, r, _)| s == "False" && r == "InvalidSpec")
                .map(|c| c.2))
        },
    )
    .await
}

async fn bad_input(client: &Client, ns: &str) -> anyhow::Result<()> {
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let hub = |name: &str, spec: serde_json::Value| {
        serde_json::from_value::<DeviceHub>(json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
            "metadata": {"name": name}, "spec": spec
        }))
    };

    // Malformed image: accepted by the schema, refused by the operator naming the field.
    hubs.create(
        &PostParams::default(),
        &hub(
            "bad-image",
            json!({"services": [{"name": "device-hub", "image": "Not A Valid::image"}]}),
        )?,
    )
    .await?;
    let message = invalid_spec(&hubs, "bad-image").await?;
    assert!(message.contains("spec.services[0].image"), "{message}");
    // Nothing was provisioned for an invalid hub.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("bad-image-device-hub").await?.is_none());

    // Duplicate service names: rejected by the schema (list-map keys) or by the operator.
    let duplicate = hub(
        "dup",
        json!({"services": [{"name": "bff", "image": "x/y:1"}, {"name": "bff", "image": "x/y:2"}]}),
    )?;
    match hubs.create(&PostParams::default(), &duplicate).await {
        Err(kube::Error::Api(e)) => assert!(
            e.message.contains("Duplicate") || e.message.contains("duplicate"),
            "{}",
            e.message
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => {
            let message = invalid_spec(&hubs, "dup").await?;
            assert!(message.contains("duplicate service name"), "{message}");
        }
    }

    // Negative replicas: the schema's minimum rejects it.
    let negative = hub(
        "negative",
        json!({"services": [{"name": "device-hub", "replicas": -1}]}),
    )?;
    match hubs.create(&PostParams::default(), &negative).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("replicas"), "{}", e.message),
        other => anyhow::bail!("replicas -1 was accepted: {other:?}"),
    }

    // Unknown fields: rejected where the API server validates fields strictly, pruned otherwise
    // (Kubernetes 1.20); never stored.
    let unknown: serde_json::Value = json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
        "metadata": {"name": "unknown"}, "spec": {"bogusField": 1}
    });
    let request = http::Request::post(format!(
        "/apis/meterpark.io/v1alpha1/namespaces/{ns}/devicehubs?fieldValidation=Strict"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&unknown)?)?;
    if client.request_text(request).await.is_ok() {
        let stored = serde_json::to_value(hubs.get("unknown").await?.spec)?;
        assert!(
            stored.get("bogusField").is_none(),
            "unknown field stored: {stored}"
        );
    }

    // A bad certificate setting: CertificatesReady=False with a precise reason; nothing deleted.
    hubs.create(
        &PostParams::default(),
        &hub("short-certs", json!({"certificates": {"duration": "5m"}}))?,
    )
    .await?;
    let reason = wait_for(
        "CertificatesReady=False DurationTooShort",
        Duration::from_secs(60),
        || async {
            let status = hub_status(&hubs, "short-certs").await?;
            Ok(condition(&status, "CertificatesReady")
                .filter(|c| c.0 == "False")
                .map(|c| c.1))
        },
    )
    .await?;
    assert_eq!(reason, "DurationTooShort");

    // The HES token Secret does not exist: the hub names the field and the Secret.
    hubs.create(
        &PostParams::default(),
        &hub(
            "no-token",
            json!({"hes": {"endpoint": "https://hes.example", "auth": {"tokenSecret": "hes-token-missing"}}}),
        )?,
    )
    .await?;
    let (reason, message) = wait_for(
        "IngestAuthenticated=False SecretNotFound",
        Duration::from_secs(60),
        || async {
            let status = hub_status(&hubs, "no-token").await?;
            Ok(condition(&status, "IngestAuthenticated")
                .filter(|c| c.0 == "False")
                .map(|c| (c.1, c.2)))
        },
    )
    .await?;
    assert_eq!(reason, "SecretNotFound", "{message}");
    assert!(
        message.contains(&format!(
            "spec.hes.auth.tokenSecret: Secret {ns}/hes-token-missing"
        )),
        "{message}"
    );
    Ok(())
}
