//! With nothing changing, the operator makes no API writes (counted on its own metrics) — a
//! separate test binary so no other test's objects change meanwhile. Test binaries run one after
//! another, but the namespaces of the ones before may still be terminating: the test waits for
//! them first, since their teardown is a change.

use std::time::Duration;

use mpm_e2e::{
    client, condition, create, grown_series, leader, operator_writes_by_series, require_cluster,
    unsettled_namespaces, wait_for, TestNamespace,
};
use mpm_operator::crd::DeviceHub;
use serde_json::json;

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn no_writes_when_nothing_changes() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-quiet").await?;
    let hubs: kube::Api<DeviceHub> = kube::Api::namespaced(client.clone(), &ns.name);
    let result = async {
        create::<DeviceHub>(
            &client,
            &ns.name,
            json!({
                "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub",
                "metadata": {"name": "quiet"}, "spec": {}
            }),
        )
        .await?;
        wait_for("hub Ready", Duration::from_secs(240), || async {
            let status = serde_json::to_value(hubs.get("quiet").await?.status)?;
            Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(()))
        })
        .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let others = unsettled_namespaces(&client, &ns.name).await?;
            if others.is_empty() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "namespaces of other tests still there after 5 min: {others:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Let the last status updates and watch events settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Both readings from the same leader process: a new leader's counters start at zero.
        let leader_before = leader(&client).await?;
        let before = operator_writes_by_series(&client).await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = operator_writes_by_series(&client).await?;
        let leader_after = leader(&client).await?;
        anyhow::ensure!(
            leader_before == leader_after,
            "leadership moved during the quiet minute ({leader_before} -> {leader_after}): \
             nothing changed, so no replica should have lost the Lease"
        );
        let grown = grown_series(&before, &after);
        let total: u64 = grown.values().sum();
        println!("operator API writes over 60 s with nothing changing: {total} {grown:?}");
        anyhow::ensure!(
            grown.is_empty(),
            "the operator wrote {total} times in 60 s with nothing changing: {grown:?} \
             (unsettled namespaces: {:?})",
            unsettled_namespaces(&client, &ns.name).await?
        );
        Ok(())
    }
    .await;
    ns.delete().await;
    result
}
