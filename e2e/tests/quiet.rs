//! With nothing changing, the operator makes no API writes (counted on its own metrics) — a
//! separate test binary so no other test's objects change meanwhile.

use std::time::Duration;

use mpm_e2e::{client, condition, create, operator_writes, skip, wait_for, TestNamespace};
use mpm_operator::crd::DeviceHub;
use serde_json::json;

#[tokio::test]
async fn no_writes_when_nothing_changes() -> anyhow::Result<()> {
    if skip("no_writes_when_nothing_changes") {
        return Ok(());
    }
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
        // Let the last status updates and watch events settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let before = operator_writes(&client).await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = operator_writes(&client).await?;
        println!(
            "operator API writes over 60 s with nothing changing: {}",
            after - before
        );
        anyhow::ensure!(
            after == before,
            "the operator wrote {} times in 60 s with nothing changing",
            after - before
        );
        Ok(())
    }
    .await;
    ns.delete().await;
    result
}
