//! Helpers shared by the e2e tests and benchmarks. Everything here talks to the cluster that
//! `KUBECONFIG` points to (the local cluster or kind); tests run only when `MPM_E2E=1`.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use serde_json::json;

/// Version tag of the images built from this checkout.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Namespace the operator is installed in by `e2e/install.sh` (and the chart's default).
pub const OPERATOR_NAMESPACE: &str = "mpm-system";

/// Whether e2e tests may touch a cluster: only with an explicit `MPM_E2E=1`.
pub fn enabled() -> bool {
    std::env::var("MPM_E2E").is_ok_and(|v| v == "1")
}

/// Prints why a test is skipped; returns true when it must skip.
pub fn skip(test: &str) -> bool {
    if enabled() {
        return false;
    }
    eprintln!("{test}: skipped (set MPM_E2E=1 and KUBECONFIG to run against a cluster)");
    true
}

pub async fn client() -> anyhow::Result<Client> {
    Client::try_default().await.context("connecting to the cluster in KUBECONFIG")
}

/// A namespace created for one test; call [`TestNamespace::delete`] at the end.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix: u32 = std::process::id() ^ (Instant::now().elapsed().subsec_nanos());
        let name = format!("{prefix}-{:x}", suffix & 0xffffff);
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"mpm-e2e": "true", "kubernetes.io/metadata.name": name}}
        }))?;
        api.create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}

/// Polls `check` every 500 ms until it returns `Ok(Some(v))`, failing after `timeout` with the
/// last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no observation");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sum of `mpm_operator_api_writes_total` on the leading operator replica, read through the API
/// server's pod proxy (works the same on kind and on the local cluster).
pub async fn operator_writes(client: &Client) -> anyhow::Result<u64> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let lease = leases.get("mpm-operator-leader").await.context("reading the leader Lease")?;
    let leader = lease
        .spec
        .and_then(|s| s.holder_identity)
        .context("the leader Lease has no holder")?;
    let path = format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{leader}:8080/proxy/metrics");
    let request = http::Request::get(path).body(Vec::new())?;
    let text = client.request_text(request).await.context("reading the operator's /metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("mpm_operator_api_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Creates or replaces an object from JSON in a namespace (client-side semantics, like
/// `kubectl create`), for test fixtures.
pub async fn create<K>(client: &Client, ns: &str, value: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let obj: K = serde_json::from_value(value)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// A condition of a custom resource's status (`status.conditions[type]`) as (status, reason, message).
pub fn condition(status: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    })
}
