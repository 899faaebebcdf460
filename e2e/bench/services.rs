//! Issue 6: idle memory of each service pod (namespace `meter-park`). The in-process throughput
//! comparison (device-hub over mTLS vs "the same service over plain server-only TLS") is skipped:
//! the services crate starts device-hub only behind `server::start_common`, whose TLS config
//! (`tls::server_config`) always requires a client certificate, and device-hub's router is private,
//! so device-hub cannot be served over server-only TLS without changing `services/`; the e2e crate
//! also does not depend on `mpm-services`.

use kube::Client;

use crate::common::{self, Row};

pub const NAMESPACE: &str = "meter-park";

pub async fn run(client: &Client) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![Row::info(
        "services: req/s + p99, mTLS vs plain TLS",
        "SKIPPED: device-hub has no server-only TLS mode and its router is private (see bench/services.rs)",
    )];
    let pods = common::pod_memory(client, NAMESPACE, |_| true).await?;
    if pods.is_empty() {
        rows.push(Row::info(
            "services: idle RSS",
            format!("no running pods in namespace {NAMESPACE}"),
        ));
    }
    for mem in &pods {
        rows.extend(common::memory_rows(
            &format!("services: idle RSS {}", mem.pod),
            mem,
            20.0,
        ));
    }
    Ok(rows)
}
