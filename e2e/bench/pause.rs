//! Pausing the operator without stopping its pods: the benchmark takes the operator's leader Lease
//! (the same protocol the replicas use), so the leader exits and every replica stands by while
//! still serving (health, metrics, admission). Handing the Lease back lets a replica take over;
//! the moment it does is where a backlog measurement starts.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use mpm_e2e::OPERATOR_NAMESPACE;

const LEASE: &str = "mpm-operator-leader";
const HOLDER: &str = "mpm-bench";
/// Lease duration the benchmark writes while it holds the Lease.
const HOLD: Duration = Duration::from_secs(15);

/// The operator, paused: the benchmark holds its leader Lease and renews it until `resume`.
pub struct OperatorPause {
    leases: Api<Lease>,
    renewer: tokio::task::JoinHandle<()>,
}

/// Writes the Lease as held by `holder` (empty: free to take), retrying on conflicts.
async fn write_lease(leases: &Api<Lease>, holder: &str) -> anyhow::Result<()> {
    for _ in 0..10 {
        let mut lease = leases
            .get(LEASE)
            .await
            .context("reading the leader Lease")?;
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(holder) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(holder.to_string());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(HOLD.as_secs() as i32);
        match leases.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context("writing the leader Lease"),
        }
    }
    bail!("the leader Lease kept changing under the benchmark")
}

async fn holder(leases: &Api<Lease>) -> anyhow::Result<String> {
    Ok(leases
        .get(LEASE)
        .await
        .context("reading the leader Lease")?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

async fn restarts(pods: &Api<Pod>, name: &str) -> anyhow::Result<i32> {
    let pod = pods.get(name).await?;
    Ok(pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .sum())
}

impl OperatorPause {
    /// Takes the Lease and waits until the replica that held it has stopped reconciling (it exits
    /// when it sees the Lease taken, and its container restarts as a standby).
    pub async fn start(client: &Client) -> anyhow::Result<Self> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let old = holder(&leases).await?;
        let before = restarts(&pods, &old).await.ok();
        write_lease(&leases, HOLDER).await?;
        let renewer = {
            let leases = leases.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HOLD / 5).await;
                    if let Err(e) = write_lease(&leases, HOLDER).await {
                        eprintln!("  renewing the benchmark's hold on the Lease: {e:#}");
                    }
                }
            })
        };
        if let Some(before) = before {
            mpm_e2e::wait_for(
                "the operator leader to step down",
                Duration::from_secs(60),
                || async { Ok((restarts(&pods, &old).await? > before).then_some(())) },
            )
            .await?;
        }
        eprintln!("  operator paused (benchmark holds the leader Lease; {old} stepped down)");
        Ok(Self { leases, renewer })
    }

    /// Frees the Lease and waits until a replica takes it; returns when it did and how long the
    /// replicas' election retry took.
    pub async fn resume(self) -> anyhow::Result<(Instant, Duration)> {
        self.renewer.abort();
        let freed = Instant::now();
        write_lease(&self.leases, "").await?;
        let deadline = freed + Duration::from_secs(60);
        loop {
            let h = holder(&self.leases).await?;
            if !h.is_empty() && h != HOLDER {
                let now = Instant::now();
                eprintln!("  operator resumed: {h} leads");
                return Ok((now, now - freed));
            }
            if Instant::now() > deadline {
                bail!("no operator replica took the leader Lease within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
