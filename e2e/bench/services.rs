//! Issue 6: the services' figures: the in-process mTLS vs TLS comparison (`tls.rs`) and the idle
//! memory of each service pod in namespace `meter-park` (needs the cluster).

use kube::Client;

use crate::common::{self, Row};
use crate::tls::{self, TlsOptions};

pub const NAMESPACE: &str = "meter-park";

/// Idle memory of each service pod (needs the cluster).
pub async fn idle_rss(client: &Client) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
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

/// The whole issue-6 section: the in-process comparison always, idle RSS when a cluster client
/// could be built.
pub async fn run(client: anyhow::Result<Client>, opts: &TlsOptions) -> anyhow::Result<Vec<Row>> {
    let mut rows = tls::tls(opts).await?;
    match client {
        Ok(client) => match idle_rss(&client).await {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(Row::new(
                "services: idle RSS",
                format!("FAILED: {e:#}"),
                "< 20 MiB",
                Some(false),
            )),
        },
        Err(e) => rows.push(Row::info(
            "services: idle RSS",
            format!("SKIPPED (no cluster: {e}: {})", e.root_cause()),
        )),
    }
    Ok(rows)
}
