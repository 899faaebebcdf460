//! Helpers shared by the e2e tests and benchmarks. Everything here talks to the cluster that
//! `KUBECONFIG` points to (the local cluster or kind); the tests are `#[ignore]`d and run with
//! `MPM_E2E=1 cargo test -p mpm-e2e -- --ignored`.

use std::collections::BTreeMap;
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

/// Every test that needs a cluster is `#[ignore]`d (plain `cargo test` leaves it out, it never
/// counts as passed without running) and starts with this call: asked for with `--ignored`, it
/// still refuses to touch the cluster in `KUBECONFIG` unless `MPM_E2E=1` says that is intended.
pub fn require_cluster() {
    assert!(
        enabled(),
        "this test changes the cluster KUBECONFIG points to: set MPM_E2E=1 to allow it"
    );
}

pub async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("connecting to the cluster in KUBECONFIG")
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
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (not waiting for it to go). Retried a few times: a namespace left
    /// behind keeps its objects changing (certificate renewals) under later tests.
    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for attempt in 1..=5 {
            match api.delete(&self.name, &DeleteParams::background()).await {
                Ok(_) => return,
                // Gone, or already terminating (a first attempt that went through).
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) if attempt == 5 => {
                    eprintln!("could not delete namespace {}: {e}", self.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
}

/// Namespaces whose objects may still change: those of other e2e tests (label `mpm-e2e=true`,
/// other than `own`) and any namespace terminating (the examples' own), with their phase.
pub async fn unsettled_namespaces(client: &Client, own: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .context("listing namespaces")?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|ns| {
            let name = ns.metadata.name?;
            let test = ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("mpm-e2e"))
                .is_some_and(|v| v == "true");
            let status = ns.status.unwrap_or_default();
            let phase = status.phase.unwrap_or_default();
            // A namespace stuck terminating says why in its conditions (content left, finalizers,
            // discovery or deletion failures).
            let why: Vec<String> = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.status == "True")
                .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                .collect();
            ((test || phase == "Terminating") && name != own).then(|| {
                format!(
                    "{name} ({phase}{})",
                    why.iter().map(|w| format!("; {w}")).collect::<String>()
                )
            })
        })
        .collect())
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
    Ok(operator_writes_by_series(client).await?.values().sum())
}

/// `mpm_operator_api_writes_total` of the leading operator replica per series (its labels, as
/// exposed: `{resource="Secret",verb="patch"}`), so a test can say what was written.
pub async fn operator_writes_by_series(client: &Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = leader_metrics(client).await?;
    Ok(write_series(&text))
}

fn write_series(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("mpm_operator_api_writes_total"))
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Series that grew between two `operator_writes_by_series` readings, with how much.
pub fn grown_series(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(series, n)| {
            let grew = n.saturating_sub(before.get(series).copied().unwrap_or(0));
            (grew > 0).then(|| (series.clone(), grew))
        })
        .collect()
}

/// The value of one series (name and labels, as exposed) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Name of the pod holding the operator's leader Lease.
pub async fn leader(client: &Client) -> anyhow::Result<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let lease = leases
        .get("mpm-operator-leader")
        .await
        .context("reading the leader Lease")?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .context("the leader Lease has no holder")
}

/// The `/metrics` text of the leading operator replica, through the API server's pod proxy.
pub async fn leader_metrics(client: &Client) -> anyhow::Result<String> {
    let leader = leader(client).await?;
    let path = format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{leader}:8080/proxy/metrics");
    let request = http::Request::get(path).body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("reading the operator's /metrics")?;
    Ok(text)
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
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Calls `to_service` of hub `hub` over mTLS with `as_service`'s certificate (read from its Secret)
/// through a port-forward to one of its pods, so it works on kind and on the local cluster alike.
/// Returns the HTTP status (0 when the TLS handshake or the request was refused) and the body.
#[allow(clippy::too_many_arguments)]
pub async fn mtls_call(
    client: &Client,
    ns: &str,
    hub: &str,
    as_service: &str,
    to_service: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
    use kube::api::ListParams;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = secrets
        .get(&format!("{hub}-{as_service}-tls"))
        .await?
        .data
        .unwrap_or_default();
    let field = |k: &str| data.get(k).map(|b| b.0.clone()).unwrap_or_default();
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{hub}-trust-bundle"))
        .await?
        .data
        .unwrap_or_default()
        .get("ca-bundle.pem")
        .cloned()
        .unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(ca?)?;
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&field("tls.crt")).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("meterpark.io/hub={hub},meterpark.io/service={to_service}");
    let pod = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .ok_or_else(|| anyhow::anyhow!("no running {to_service} pod"))?;
    let mut forwarder = pods
        .portforward(pod.metadata.name.as_deref().unwrap_or_default(), &[8443])
        .await?;
    let stream = forwarder
        .take_stream(8443)
        .context("no port-forward stream")?;
    // The server's certificate carries its Service DNS names; verify against one of them.
    let server_name = ServerName::try_from(format!("{hub}-{to_service}.{ns}.svc"))?;
    let Ok(mut tls) = connector.connect(server_name, stream).await else {
        return Ok((0, String::new()));
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {to_service}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    if tls.write_all(&bytes).await.is_err() {
        return Ok((0, String::new()));
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    drop(tls);
    forwarder.abort();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The bearer token the test hubs' HES sends to the connector's ingest port (Secret `hes-ingest`).
pub const INGEST_TOKEN: &str = "e2e-ingest-token-0123456789abcdef";

/// Creates the Secret `hes-ingest` (key `token`: [`INGEST_TOKEN`]) in `ns` and returns the
/// DeviceHub `spec.hes` that makes the connector require it (contract: ingest API).
pub async fn create_ingest_token(client: &Client, ns: &str) -> anyhow::Result<serde_json::Value> {
    create::<k8s_openapi::api::core::v1::Secret>(
        client,
        ns,
        json!({"metadata": {"name": "hes-ingest"}, "stringData": {"token": INGEST_TOKEN}}),
    )
    .await?;
    Ok(json!({"endpoint": "https://hes.e2e", "auth": {"tokenSecret": "hes-ingest"}}))
}

/// One plain HTTP/1.1 request to the ingest port (8090) of a running connector pod of `hub`
/// through a port-forward (the API server's service proxy would consume the `Authorization`
/// header), as the HES: with `Bearer` [`INGEST_TOKEN`] unless `authorization` says otherwise.
/// Returns the status (0 without an answer) and the body.
#[allow(clippy::too_many_arguments)]
pub async fn ingest_call(
    client: &Client,
    ns: &str,
    hub: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    authorization: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("meterpark.io/hub={hub},meterpark.io/service=iec61968-connector");
    let pod = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("no running iec61968-connector pod"))?;
    let mut forwarder = pods.portforward(&pod, &[8090]).await?;
    let mut stream = forwarder
        .take_stream(8090)
        .context("no port-forward stream")?;
    let bearer = format!("Bearer {INGEST_TOKEN}");
    let authorization = authorization.unwrap_or(&bearer);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: connector\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if !authorization.is_empty() {
        request.push_str(&format!("authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    drop(stream);
    forwarder.abort();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_series_are_read_per_label_set_and_diffed() {
        let before = write_series(
            "# TYPE mpm_operator_api_writes counter\n\
             mpm_operator_api_writes_total{resource=\"Secret\",verb=\"patch\"} 3\n\
             mpm_operator_api_writes_created 1.7e9\n",
        );
        assert_eq!(before.values().sum::<u64>(), 3);
        let after = write_series(
            "mpm_operator_api_writes_total{resource=\"Secret\",verb=\"patch\"} 5\n\
             mpm_operator_api_writes_total{resource=\"DeviceHub/status\",verb=\"patch\"} 1\n",
        );
        let grown = grown_series(&before, &after);
        assert_eq!(
            grown.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "{resource=\"DeviceHub/status\",verb=\"patch\"}".to_string(),
                    1
                ),
                ("{resource=\"Secret\",verb=\"patch\"}".to_string(), 2),
            ]
        );
    }
}
