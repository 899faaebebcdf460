//! Shared helpers of the benchmarks: result rows and tables, percentiles, the operator leader, and
//! memory figures of pods (kubelet summary API, plus `/proc` when the node is this host).

use std::time::Duration;

use anyhow::Context as _;
use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use mpm_e2e::OPERATOR_NAMESPACE;

pub const MIB: f64 = 1024.0 * 1024.0;

/// One printed figure.
pub struct Row {
    pub bench: String,
    pub figure: String,
    pub target: String,
    /// `Some(true)` PASS, `Some(false)` MISS, `None` informational.
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(bench: &str, figure: impl Into<String>, target: &str, pass: Option<bool>) -> Self {
        Self {
            bench: bench.to_string(),
            figure: figure.into(),
            target: target.to_string(),
            pass,
        }
    }
    pub fn info(bench: &str, figure: impl Into<String>) -> Self {
        Self::new(bench, figure, "-", None)
    }
}

pub fn print_table(title: &str, rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.bench.len()).max().unwrap_or(0).max(9);
    let w1 = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!();
    println!("== {title} ==");
    println!(
        "{:<w0$} | {:<w1$} | {:<w2$} | result",
        "benchmark", "figure", "target"
    );
    println!("{}", "-".repeat(w0 + w1 + w2 + 15));
    for r in rows {
        let verdict = match r.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "info",
        };
        println!(
            "{:<w0$} | {:<w1$} | {:<w2$} | {verdict}",
            r.bench, r.figure, r.target
        );
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Memory of one pod: kubelet summary working set and RSS (summed over containers), and the
/// VmRSS of its processes read from `/proc` when the node runs on this host.
#[derive(Debug, Clone, Default)]
pub struct PodMemory {
    pub pod: String,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub proc_rss: Option<u64>,
}

impl PodMemory {
    /// The figure used for the verdict: `/proc` VmRSS, else summary rssBytes, else working set.
    pub fn best(&self) -> Option<(u64, &'static str)> {
        self.proc_rss
            .map(|v| (v, "VmRSS"))
            .or(self.rss.map(|v| (v, "rssBytes")))
            .or(self.working_set.map(|v| (v, "workingSet")))
    }

    pub fn describe(&self) -> String {
        let f =
            |v: Option<u64>| v.map_or("n/a".to_string(), |b| format!("{:.1} MiB", b as f64 / MIB));
        format!(
            "VmRSS {} | summary rssBytes {} | workingSetBytes {}",
            f(self.proc_rss),
            f(self.rss),
            f(self.working_set)
        )
    }
}

async fn summary(client: &Client) -> anyhow::Result<serde_json::Value> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .and_then(|n| n.metadata.name)
        .context("no node")?;
    let request =
        http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary")).body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("kubelet summary API")?;
    Ok(serde_json::from_str(&text)?)
}

/// Sum of VmRSS (bytes) of every process in the pod's cgroup (pause containers excluded).
fn proc_rss(pod_uid: &str) -> Option<u64> {
    let dashed = format!("pod{pod_uid}");
    let underscored = format!("pod{}", pod_uid.replace('-', "_"));
    let mut total = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(path.join("cgroup")) else {
            continue;
        };
        if !(cgroup.contains(&dashed) || cgroup.contains(&underscored)) {
            continue;
        }
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "pause") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        if let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += kb * 1024;
            found = true;
        }
    }
    found.then_some(total)
}

/// Memory of every pod in `namespace` whose name passes `filter`.
pub async fn pod_memory(
    client: &Client,
    namespace: &str,
    filter: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<PodMemory>> {
    let summary = summary(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let live = pods.list(&ListParams::default()).await?.items;
    let mut out = Vec::new();
    for p in summary["pods"].as_array().into_iter().flatten() {
        let reference = &p["podRef"];
        let name = reference["name"].as_str().unwrap_or_default();
        if reference["namespace"] != namespace || !filter(name) {
            continue;
        }
        // Skip pods that are gone (the summary lags behind deletions).
        let Some(pod) = live
            .iter()
            .find(|lp| lp.metadata.name.as_deref() == Some(name))
        else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let sum = |key: &str| {
            let values: Vec<u64> = p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["memory"][key].as_u64())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        let uid = reference["uid"].as_str().unwrap_or_default();
        out.push(PodMemory {
            pod: name.to_string(),
            working_set: sum("workingSetBytes"),
            rss: sum("rssBytes"),
            proc_rss: proc_rss(uid),
        });
    }
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// Memory of the operator's leader pod.
pub async fn leader_memory(client: &Client) -> anyhow::Result<PodMemory> {
    let leader = mpm_e2e::leader(client).await?;
    pod_memory(client, OPERATOR_NAMESPACE, |n| n == leader)
        .await?
        .into_iter()
        .next()
        .with_context(|| {
            format!("no memory figures for the leader pod {leader} in the kubelet summary")
        })
}

/// Rows for a memory figure against a limit in MiB.
pub fn memory_rows(bench: &str, mem: &PodMemory, limit_mib: f64) -> Vec<Row> {
    let target = format!("< {limit_mib:.0} MiB");
    let mut rows = vec![match mem.best() {
        Some((bytes, what)) => Row::new(
            bench,
            format!("{:.1} MiB ({what}, {})", bytes as f64 / MIB, mem.pod),
            &target,
            Some((bytes as f64 / MIB) < limit_mib),
        ),
        None => Row::new(bench, "no figure", &target, None),
    }];
    rows.push(Row::info(&format!("{bench} (all)"), mem.describe()));
    rows
}

/// Runs `n` operations with `concurrency` in flight; returns the wall time and the error count
/// (first error printed).
pub async fn run_concurrent<F, Fut>(n: usize, concurrency: usize, op: F) -> (Duration, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = std::time::Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(op)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let errors: Vec<&anyhow::Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = errors.first() {
        eprintln!("  {} of {n} operations failed; first: {e:#}", errors.len());
    }
    (elapsed, errors.len())
}

/// Waits until no namespace is being deleted: a namespace of an earlier run that still deletes
/// thousands of objects (with finalizers the operator runs) would load the API server and the
/// operator during the measurement.
pub async fn wait_for_quiet_namespaces(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let terminating = || async {
        Ok::<Vec<String>, anyhow::Error>(
            namespaces
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|n| n.metadata.deletion_timestamp.is_some())
                .filter_map(|n| n.metadata.name)
                .collect(),
        )
    };
    let now = terminating().await?;
    if now.is_empty() {
        return Ok(());
    }
    eprintln!("  waiting for namespaces being deleted: {}", now.join(", "));
    mpm_e2e::wait_for(
        "namespaces of earlier runs to be deleted",
        Duration::from_secs(900),
        || async { Ok(terminating().await?.is_empty().then_some(())) },
    )
    .await
}

/// Creates a namespace labelled for cleanup.
pub async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<mpm_e2e::TestNamespace> {
    let ns = mpm_e2e::TestNamespace::create(client, prefix).await?;
    eprintln!("  namespace {}", ns.name);
    Ok(ns)
}

/// `process_cpu_seconds_total` in a Prometheus text exposition.
fn cpu_seconds(metrics: &str) -> Option<f64> {
    mpm_e2e::metric(metrics, "process_cpu_seconds_total")
}

/// CPU seconds used so far by the API server (its own `/metrics`) and by the operator's leader
/// (through the pod proxy), so that a benchmark can say where the CPU of a phase went on any
/// cluster, kind included. Either is None where it cannot be read.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub apiserver: Option<f64>,
    pub leader: Option<(String, f64)>,
}

impl CpuSample {
    pub async fn take(client: &Client) -> Self {
        let request = http::Request::get("/metrics").body(Vec::new());
        let apiserver = match request {
            Ok(r) => client.request_text(r).await.ok(),
            Err(_) => None,
        };
        let leader = async {
            let name = mpm_e2e::leader(client).await.ok()?;
            let text = mpm_e2e::leader_metrics(client).await.ok()?;
            Some((name, cpu_seconds(&text)?))
        };
        CpuSample {
            apiserver: apiserver.as_deref().and_then(cpu_seconds),
            leader: leader.await,
        }
    }

    /// "API server x ms, operator leader y ms" of CPU per operation between `self` and `later`.
    pub fn per_operation(&self, later: &CpuSample, operations: usize) -> String {
        let per = |a: f64, b: f64| format!("{:.2} ms", (b - a) * 1000.0 / operations as f64);
        let apiserver = match (self.apiserver, later.apiserver) {
            (Some(a), Some(b)) => per(a, b),
            _ => "n/a".into(),
        };
        let leader = match (&self.leader, &later.leader) {
            (Some((n1, a)), Some((n2, b))) if n1 == n2 => per(*a, *b),
            _ => "n/a".into(),
        };
        format!("API server {apiserver}, operator leader {leader}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_operation_needs_the_same_leader() {
        let text = "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 12.5\n";
        assert_eq!(cpu_seconds(text), Some(12.5));
        let a = CpuSample {
            apiserver: Some(10.0),
            leader: Some(("a".into(), 1.0)),
        };
        let b = CpuSample {
            apiserver: Some(30.0),
            leader: Some(("a".into(), 6.0)),
        };
        assert_eq!(
            a.per_operation(&b, 10_000),
            "API server 2.00 ms, operator leader 0.50 ms"
        );
        let c = CpuSample {
            apiserver: None,
            leader: Some(("b".into(), 6.0)),
        };
        assert_eq!(
            a.per_operation(&c, 10),
            "API server n/a, operator leader n/a"
        );
    }
}
