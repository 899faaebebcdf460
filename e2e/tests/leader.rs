//! Leader election: of the operator's two replicas one holds the Lease; when it dies, the other
//! takes over within the lease duration and reconciles; when it stops gracefully, it releases the
//! Lease and a standby takes over at once (its own test binary: it kills the leader).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use mpm_e2e::{client, condition, create, skip, wait_for, TestNamespace, OPERATOR_NAMESPACE};
use mpm_operator::crd::DeviceHub;
use serde_json::json;

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    if skip("standby_takes_over_when_the_leader_dies") {
        return Ok(());
    }
    let client = client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let running = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=mpm-operator"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    anyhow::ensure!(
        running >= 2,
        "the chart runs two operator replicas, found {running}"
    );
    let holder = |lease: Lease| {
        lease
            .spec
            .and_then(|s| Some((s.holder_identity?, s.lease_duration_seconds?)))
    };
    let (leader, duration) = holder(leases.get("mpm-operator-leader").await?)
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;

    // Deleted without a grace period: the process gets SIGTERM and at once SIGKILL, so it may or
    // may not release the Lease; either way a standby must lead within the bound below.
    let killed = Instant::now();
    pods.delete(
        &leader,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    let new_leader = wait_for("a new leader", Duration::from_secs(90), || async {
        let lease = leases.get("mpm-operator-leader").await?;
        // An empty holder is a released Lease, not a leader.
        Ok(holder(lease)
            .map(|h| h.0)
            .filter(|h| !h.is_empty() && h != &leader))
    })
    .await?;
    let takeover = killed.elapsed();
    println!(
        "leader {leader} killed; {new_leader} took over after {takeover:?} (lease {duration}s)"
    );
    // The standby retries every lease/3, so it acquires at most lease + lease/3 after the last renewal.
    anyhow::ensure!(
        takeover <= Duration::from_secs(u64::try_from(duration).unwrap_or(15) * 2),
        "takeover took {takeover:?} with a {duration}s lease"
    );

    // The new leader reconciles.
    let ns = TestNamespace::create(&client, "mpm-leader").await?;
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), &ns.name);
    let result = async {
        create::<DeviceHub>(
            &client,
            &ns.name,
            json!({
                "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
                "metadata": {"name": "after-failover"},
                "spec": {"services": [{"name": "device-hub", "replicas": 0},
                                      {"name": "smoc-service", "replicas": 0},
                                      {"name": "iec61968-connector", "replicas": 0}]}
            }),
        )
        .await?;
        wait_for(
            "hub reconciled by the new leader",
            Duration::from_secs(60),
            || async {
                let status = serde_json::to_value(hubs.get("after-failover").await?.status)?;
                Ok(condition(&status, "Ready").map(|_| ()))
            },
        )
        .await
    }
    .await;
    ns.delete().await;
    result?;

    // A graceful stop (rolling upgrade, drain) hands the Lease over: the stopping leader releases
    // it, so a standby takes over at its next attempt (every lease/3) instead of waiting for the
    // lease to expire (at least lease - lease/3 after the last renewal).
    let stopped = Instant::now();
    pods.delete(&new_leader, &DeleteParams::default()).await?;
    let successor = wait_for(
        "a leader after the graceful stop",
        Duration::from_secs(90),
        || async {
            let lease = leases.get("mpm-operator-leader").await?;
            Ok(holder(lease)
                .map(|h| h.0)
                .filter(|h| !h.is_empty() && h != &new_leader))
        },
    )
    .await?;
    let handover = stopped.elapsed();
    println!("leader {new_leader} stopped gracefully; {successor} took over after {handover:?}");
    let expiry_bound = Duration::from_secs(u64::try_from(duration).unwrap_or(15)) * 3 / 5;
    anyhow::ensure!(
        handover < expiry_bound,
        "handover took {handover:?}: the stopping leader did not release the Lease (a {duration}s \
         lease expires no sooner than {expiry_bound:?} after the stop)"
    );
    Ok(())
}
