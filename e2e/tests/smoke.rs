//! Smoke test of the cluster itself: an image built from this repository runs as a pod and calls
//! the API server through the `kubernetes` Service with its ServiceAccount token and CA, and
//! resolves Service names (`<svc>.<ns>.svc`) the way our services do.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, LogParams, PostParams};
use mpm_e2e::{client, require_cluster, wait_for, TestNamespace, VERSION};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn pod_reaches_the_api_server_and_resolves_services() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-smoke").await?;
    let result = run(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn run(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "none"}, "ports": [{"port": 80, "protocol": "TCP"}]}
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let echo_name = format!("echo.{ns}.svc");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "probe",
                "image": format!("localhost/mpm-e2e-probe:{VERSION}"),
                "imagePullPolicy": "IfNotPresent",
                "args": ["kubernetes.default.svc", echo_name],
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))?;
    // The echo Service exists before the pod starts, so DNS has had time to learn it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for("probe pod Running", Duration::from_secs(120), || async {
        let p = pods.get("probe").await?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        anyhow::ensure!(phase != "Failed", "probe pod failed");
        Ok((phase == "Running").then_some(()))
    })
    .await?;
    let log = wait_for("probe results", Duration::from_secs(60), || async {
        let log = pods.logs("probe", &LogParams::default()).await?;
        Ok(log.contains("\"check\":\"done\"").then_some(log))
    })
    .await?;
    let checks: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for name in [
        "api-via-service-ip".to_string(),
        "api-via-service-dns".to_string(),
        "dns:kubernetes.default.svc".to_string(),
        format!("dns:{echo_name}"),
    ] {
        let check = checks
            .iter()
            .find(|c| c["check"] == name.as_str())
            .ok_or_else(|| anyhow::anyhow!("check {name} missing from the probe's log:\n{log}"))?;
        anyhow::ensure!(
            check["ok"] == true,
            "check {name} failed: {}",
            check["detail"]
        );
    }
    let version = &checks
        .iter()
        .find(|c| c["check"] == "api-via-service-ip")
        .unwrap()["detail"];
    assert!(
        version.as_str().unwrap_or_default().starts_with('v'),
        "API server version {version}"
    );
    let echo_ip = services
        .get("echo")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    let resolved = &checks
        .iter()
        .find(|c| c["check"] == format!("dns:{echo_name}"))
        .unwrap()["detail"];
    assert_eq!(
        resolved.as_str(),
        Some(echo_ip.as_str()),
        "{echo_name} resolves to its ClusterIP"
    );
    Ok(())
}
