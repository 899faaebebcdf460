//! Issue 3: time from applying a DeviceHub to all its objects existing (p50/p95 over 20 hubs), and
//! the operator leader's memory with 100 hubs. Every service is declared with `replicas: 0`, so all
//! objects are created but no pod is scheduled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use mpm_operator::crd::DeviceHub;
use serde_json::json;

use crate::common::{self, ms, percentile, run_concurrent, Row};

const SERVICES: [&str; 3] = ["iec61968-connector", "device-hub", "smoc-service"];
const TIMED_HUBS: usize = 20;
const TOTAL_HUBS: usize = 100;

fn hub(name: &str) -> anyhow::Result<DeviceHub> {
    let services: Vec<_> = SERVICES
        .iter()
        .map(|s| json!({"name": s, "replicas": 0}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
        "metadata": {"name": name}, "spec": {"services": services}
    }))?)
}

/// Every object a hub of the three default services owns, as `Kind/name`.
fn expected(hub: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for svc in SERVICES {
        let base = format!("{hub}-{svc}");
        for kind in ["Deployment", "Service", "ServiceAccount"] {
            set.insert(format!("{kind}/{base}"));
        }
        set.insert(format!("ConfigMap/{base}-config"));
        set.insert(format!("ConfigMap/{base}-acl"));
        set.insert(format!("Secret/{base}-tls"));
        set.insert(format!("NetworkPolicy/{base}-default-deny"));
        set.insert(format!("NetworkPolicy/{base}-acl"));
    }
    set.insert(format!("ConfigMap/{hub}-trust-bundle"));
    set.insert(format!("Secret/{hub}-ca"));
    set.insert(format!("Secret/{hub}-operator-client-tls"));
    set
}

struct Apis {
    deployments: Api<Deployment>,
    services: Api<Service>,
    accounts: Api<ServiceAccount>,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    policies: Api<NetworkPolicy>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            deployments: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            accounts: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            policies: Api::namespaced(client.clone(), ns),
        }
    }

    /// `Kind/name` of every object (metadata only) in the namespace, optionally for one hub.
    async fn existing(&self, hub: Option<&str>) -> anyhow::Result<BTreeSet<String>> {
        let lp = match hub {
            Some(h) => ListParams::default().labels(&format!("meterpark.io/hub={h}")),
            None => ListParams::default(),
        };
        let (d, s, a, c, x, n) = tokio::try_join!(
            self.deployments.list_metadata(&lp),
            self.services.list_metadata(&lp),
            self.accounts.list_metadata(&lp),
            self.config_maps.list_metadata(&lp),
            self.secrets.list_metadata(&lp),
            self.policies.list_metadata(&lp),
        )?;
        let mut set = BTreeSet::new();
        let mut add = |kind: &str, names: Vec<Option<String>>| {
            set.extend(names.into_iter().flatten().map(|n| format!("{kind}/{n}")));
        };
        add(
            "Deployment",
            d.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        add(
            "Service",
            s.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        add(
            "ServiceAccount",
            a.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        add(
            "ConfigMap",
            c.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        add(
            "Secret",
            x.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        add(
            "NetworkPolicy",
            n.items.into_iter().map(|o| o.metadata.name).collect(),
        );
        Ok(set)
    }
}

pub async fn run(client: &Client) -> anyhow::Result<Vec<Row>> {
    common::wait_for_quiet_namespaces(client).await?;
    let ns = common::namespace(client, "mpm-bench-hubs").await?;
    let result = measure(client, &ns.name).await;
    ns.delete().await;
    result
}

async fn measure(client: &Client, ns: &str) -> anyhow::Result<Vec<Row>> {
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let apis = Apis::new(client, ns);
    let mut rows = Vec::new();
    let baseline = common::leader_memory(client).await?;

    // 1. Apply one hub at a time; poll its objects every 50 ms.
    let mut samples = Vec::new();
    for i in 0..TIMED_HUBS {
        let name = format!("b{i:03}");
        let want = expected(&name);
        let start = Instant::now();
        hubs.create(&PostParams::default(), &hub(&name)?).await?;
        loop {
            // Label-selected lists: the names are exact, the selector keeps the payload small.
            let have = apis.existing(Some(&name)).await?;
            if want.is_subset(&have) {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let missing: Vec<_> = want.difference(&have).collect();
                bail!("hub {name}: objects missing after 120 s: {missing:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = start.elapsed();
        eprintln!("  hub {name}: {} objects in {}", want.len(), ms(took));
        samples.push(took);
    }
    samples.sort();
    let (p50, p95) = (percentile(&samples, 50.0), percentile(&samples, 95.0));
    rows.push(Row::new(
        "hubs: apply → all objects, p50 (20 hubs)",
        ms(p50),
        "< 1 s",
        Some(p50 < Duration::from_secs(1)),
    ));
    rows.push(Row::info(
        "hubs: apply → all objects, p95 (20 hubs)",
        ms(p95),
    ));
    rows.push(Row::info(
        "hubs: min / max",
        format!("{} / {}", ms(samples[0]), ms(samples[samples.len() - 1])),
    ));

    // 2. 100 hubs: create the rest (8 in flight), wait until every object exists, settle, read memory.
    let start = Instant::now();
    let (_, errors) = run_concurrent(TOTAL_HUBS - TIMED_HUBS, 8, |i| {
        let hubs = hubs.clone();
        async move {
            hubs.create(
                &PostParams::default(),
                &hub(&format!("b{:03}", i + TIMED_HUBS))?,
            )
            .await?;
            Ok(())
        }
    })
    .await;
    if errors > 0 {
        bail!("{errors} hubs could not be created");
    }
    let want: BTreeSet<String> = (0..TOTAL_HUBS)
        .flat_map(|i| expected(&format!("b{i:03}")))
        .collect();
    loop {
        let have = apis.existing(None).await?;
        let missing = want.difference(&have).count();
        if missing == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("100 hubs: {missing} objects still missing after 600 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_objects = start.elapsed();
    rows.push(Row::info(
        "hubs: 80 more hubs → all 100 hubs' objects",
        format!(
            "{:.1} s ({} objects)",
            all_objects.as_secs_f64(),
            want.len()
        ),
    ));
    // Let reconciles of status and certificates settle before reading memory.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mem = common::leader_memory(client).await?;
    rows.push(Row::info(
        "hubs: operator leader memory before",
        baseline.describe(),
    ));
    rows.extend(common::memory_rows(
        "hubs: operator leader RSS at 100 hubs",
        &mem,
        50.0,
    ));
    Ok(rows)
}
