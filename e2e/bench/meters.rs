//! Issue 7: N Meters applied for a Ready hub, time until all are Provisioned, side by side with
//! the raw rate at which the API server accepts N equivalent status-sized merge patches from a
//! plain client (on pre-created ConfigMaps in a separate namespace, which no controller watches,
//! so nothing competes with the bench client), with the same concurrency. Plus the operator
//! leader's memory at N Meters.

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use mpm_e2e::condition;
use mpm_operator::crd::{DeviceHub, Meter, MeterPhase};
use serde_json::json;

use crate::common::{self, run_concurrent, Row};

/// Writes in flight, for the operator's workload (Meter creates) and the raw patches alike.
const CONCURRENCY: usize = 16;

fn meter(i: usize) -> anyhow::Result<Meter> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "Meter",
        "metadata": {"name": format!("m{i:05}")},
        "spec": {"hubRef": {"name": "bench"}, "serialNumber": format!("BENCH{i:07}"),
                 "manufacturer": "Landis+Gyr", "model": "E450", "protocol": "DLMS/COSEM",
                 "hesId": "hes-1", "location": {"address": "Bench street 1", "latitude": 52.1, "longitude": 4.3}}
    }))?)
}

/// A status of the same shape and size as a Provisioned Meter's.
fn status_body(i: usize) -> String {
    json!({
        "observedGeneration": 1, "phase": "Provisioned",
        "deviceId": format!("dev-{i:08x}-0000-4000-8000-{i:012x}"),
        "provisionedSerialNumber": format!("BENCH{i:07}"),
        "provisionedAt": "2026-01-01T00:00:00Z", "hubState": "Provisioned",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned",
                        "message": "provisioned by device-hub", "observedGeneration": 1,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    })
    .to_string()
}

pub async fn run(client: &Client, count: usize) -> anyhow::Result<Vec<Row>> {
    let raw_ns = common::namespace(client, "mpm-bench-raw").await?;
    let meters_ns = common::namespace(client, "mpm-bench-meters").await?;
    let result = measure(client, &raw_ns.name, &meters_ns.name, count).await;
    meters_ns.delete().await;
    raw_ns.delete().await;
    result
}

async fn measure(
    client: &Client,
    raw_ns: &str,
    ns: &str,
    count: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if count != 10_000 {
        rows.push(Row::info(
            "meters: NOTE",
            format!("run with --count {count}, not the issue's 10,000"),
        ));
    }

    // The hub first (default replicas, so device-hub runs), until Ready.
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let hub: DeviceHub = serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub", "metadata": {"name": "bench"}, "spec": {}
    }))?;
    hubs.create(&PostParams::default(), &hub).await?;
    mpm_e2e::wait_for("hub bench Ready", Duration::from_secs(300), || async {
        let status = serde_json::to_value(hubs.get("bench").await?.status)?;
        Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(()))
    })
    .await?;
    eprintln!("  hub bench Ready");

    // Raw ceiling: pre-create N ConfigMaps (untimed), then N merge patches of a Meter-status-sized body.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), raw_ns);
    let (_, errors) = run_concurrent(count, CONCURRENCY, |i| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("m{i:05}")}, "data": {"spec": "x"}}),
            )?;
            cms.create(&PostParams::default(), &cm).await?;
            Ok(())
        }
    })
    .await;
    if errors > 0 {
        bail!("raw: {errors} ConfigMaps not created");
    }
    let (raw_time, errors) = run_concurrent(count, CONCURRENCY, |i| {
        let cms = cms.clone();
        async move {
            let patch = json!({"data": {"status": status_body(i)}});
            cms.patch(
                &format!("m{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            Ok(())
        }
    })
    .await;
    if errors > 0 {
        bail!("raw: {errors} patches failed");
    }
    let raw_rate = count as f64 / raw_time.as_secs_f64();
    rows.push(Row::info(
        "meters: raw merge-patch ceiling",
        format!(
            "{raw_rate:.0} patches/s ({count} in {:.2} s, {CONCURRENCY} in flight)",
            raw_time.as_secs_f64()
        ),
    ));

    // Operator: create N Meters with the same concurrency; poll (paged lists) until all Provisioned.
    let meters: Api<Meter> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let (create_time, errors) = run_concurrent(count, CONCURRENCY, |i| {
        let meters = meters.clone();
        async move {
            meters.create(&PostParams::default(), &meter(i)?).await?;
            Ok(())
        }
    })
    .await;
    if errors > 0 {
        bail!("{errors} Meters not created");
    }
    eprintln!(
        "  {count} Meters created in {:.2} s",
        create_time.as_secs_f64()
    );
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * count as u32;
    let mut last_report = Instant::now();
    let provision_time = loop {
        let provisioned = count_provisioned(&meters).await?;
        if provisioned >= count {
            break start.elapsed();
        }
        if start.elapsed() > timeout {
            bail!("only {provisioned} of {count} Meters Provisioned after {timeout:?}");
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {provisioned}/{count} Provisioned after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let op_rate = count as f64 / provision_time.as_secs_f64();
    let ratio = op_rate / raw_rate;
    rows.push(Row::info(
        "meters: create N Meters (client side)",
        format!("{:.2} s", create_time.as_secs_f64()),
    ));
    rows.push(Row::info(
        "meters: apply → all Provisioned",
        format!(
            "{:.2} s = {op_rate:.0} Meters/s ({count} Meters)",
            provision_time.as_secs_f64()
        ),
    ));
    rows.push(Row::new(
        "meters: operator rate / raw ceiling",
        format!("{:.1} %", ratio * 100.0),
        ">= 70 %",
        Some(ratio >= 0.70),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem = common::leader_memory(client).await?;
    rows.extend(common::memory_rows(
        &format!("meters: operator leader RSS at {count} Meters"),
        &mem,
        100.0,
    ));
    Ok(rows)
}

async fn count_provisioned(meters: &Api<Meter>) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut lp = ListParams::default().limit(1000);
    loop {
        let page = meters.list(&lp).await?;
        n += page
            .items
            .iter()
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == MeterPhase::Provisioned)
            })
            .count();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return Ok(n),
        }
    }
}
