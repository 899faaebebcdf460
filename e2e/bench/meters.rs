//! Issue 7: N Meters applied for a Ready hub, time until all are Provisioned, side by side with
//! the raw rate at which the API server accepts N equivalent status patches from a plain client:
//! merge patches of a Provisioned Meter's status on the /status subresource of N objects of a copy
//! of the Meter CRD that no controller watches (the ceiling is the best of 16 and 64 in flight),
//! and, for reference, on N ConfigMaps. Plus the operator leader's memory at N Meters.
//!
//! The N Meters are applied while the operator is paused (see `pause.rs`); the timed window runs
//! from a replica taking the leader Lease back to the last Meter Provisioned. Creating N objects
//! costs the API server about as much as the N patches of the ceiling, so a window that also held
//! the creates could not reach the target whatever the operator did; the creates are timed and
//! printed separately. Last, the N Meters are deleted and timed until the last one is deprovisioned
//! and gone (a mass decommission).

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use mpm_e2e::condition;
use mpm_operator::crd::{DeviceHub, Meter, MeterPhase, ServiceACL};
use serde_json::json;

use crate::common::{self, run_concurrent, CpuSample, Row};
use crate::pause::OperatorPause;

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
    common::wait_for_quiet_namespaces(client).await?;
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
    // The example park's ACL, so that device-hub hands every Meter on to smoc-service as it does
    // in production (without it smoc-service refuses device-hub and the outbox only waits).
    let acls: Api<ServiceACL> = Api::namespaced(client.clone(), ns);
    let acl: ServiceACL = serde_json::from_value(json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "ServiceACL", "metadata": {"name": "bench"},
        "spec": {"hubRef": {"name": "bench"}, "allow": [
            {"from": "iec61968-connector", "to": "device-hub",
             "http": {"methods": ["POST"], "pathPrefixes": ["/v1/events"]}},
            {"from": "device-hub", "to": "smoc-service",
             "http": {"methods": ["PUT", "POST", "DELETE"],
                      "pathPrefixes": ["/v1/devices/", "/v1/readings", "/v1/batch"]}}
        ]}
    }))?;
    acls.create(&PostParams::default(), &acl).await?;
    mpm_e2e::wait_for("hub bench Ready", Duration::from_secs(300), || async {
        let status = serde_json::to_value(hubs.get("bench").await?.status)?;
        Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(()))
    })
    .await?;
    eprintln!("  hub bench Ready");

    // Raw ceilings, untimed set-up first: N ConfigMaps (typed, protobuf in etcd) and N objects of a
    // copy of the Meter CRD (same schema, status subresource, no controller), then N merge patches
    // of a Provisioned Meter's status on each. The CR /status patch is the equivalent write; the
    // ConfigMap figure shows how much the CR path itself costs.
    let cm_rate = raw_configmap_patches(client, raw_ns, count).await?;
    rows.push(Row::info(
        "meters: raw ConfigMap merge patches",
        format!("{cm_rate:.0} patches/s ({count}, {CONCURRENCY} in flight)"),
    ));
    let mut raw_rate: f64 = 0.0;
    for (in_flight, rate, cpu) in raw_status_patches(client, raw_ns, count).await? {
        rows.push(Row::info(
            "meters: raw Meter-schema /status merge patches",
            format!("{rate:.0} patches/s ({count}, {in_flight} in flight)"),
        ));
        rows.push(Row::info(
            &format!("meters: CPU per raw patch ({in_flight} in flight)"),
            cpu,
        ));
        raw_rate = raw_rate.max(rate);
    }

    // Operator: paused (the benchmark holds its leader Lease; the replicas keep serving, the
    // admission webhook too), the N Meters applied, then the window from a replica taking the
    // Lease back to the last Meter Provisioned: the new leader lists the N Meters, provisions them
    // in device-hub and writes N statuses.
    let meters: Api<Meter> = Api::namespaced(client.clone(), ns);
    let pause = OperatorPause::start(client).await?;
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
    let create_rate = count as f64 / create_time.as_secs_f64();
    rows.push(Row::info(
        "meters: apply N Meters, operator paused",
        format!(
            "{:.2} s = {create_rate:.0} creates/s = {:.0} % of the raw ceiling",
            create_time.as_secs_f64(),
            create_rate / raw_rate * 100.0
        ),
    ));
    let already = provisioned_in_api(&meters).await?;
    if already > 0 {
        bail!("{already} Meters were Provisioned while the operator was paused");
    }
    // Progress comes from the leader's `mpm_operator_meters` gauge (its cache, which holds only
    // what the API server stored), read every 250 ms: a watch or lists of 10,000 Meters would add
    // API server load that the raw ceiling does not carry. A list confirms the end.
    let (start, election) = pause.resume().await?;
    let cpu_start = CpuSample::take(client).await;
    let mut first_provisioned = None;
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * count as u32;
    let mut last_report = Instant::now();
    let provision_time = loop {
        let provisioned = provisioned_in_leader_cache(client, ns).await.unwrap_or(0);
        if provisioned > 0 && first_provisioned.is_none() {
            first_provisioned = Some(start.elapsed());
        }
        if provisioned >= count as u64 {
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let cpu_end = CpuSample::take(client).await;
    let confirmed = provisioned_in_api(&meters).await?;
    if confirmed < count as u64 {
        bail!("the leader's cache counts {count} Provisioned Meters, the API server {confirmed}");
    }
    let op_rate = count as f64 / provision_time.as_secs_f64();
    let ratio = op_rate / raw_rate;
    // The new leader's counter started with its process, just before the window.
    let operator_writes = mpm_e2e::operator_writes(client).await?;
    let window_rate = operator_writes as f64 / provision_time.as_secs_f64();
    rows.push(Row::info(
        "meters: leader election after the pause (not in the window)",
        format!("{:.2} s", election.as_secs_f64()),
    ));
    rows.push(Row::info(
        "meters: Lease taken → all Provisioned",
        format!(
            "{:.2} s = {op_rate:.0} Meters/s ({count} Meters)",
            provision_time.as_secs_f64()
        ),
    ));
    if let Some(first) = first_provisioned {
        rows.push(Row::info(
            "meters: first Meter Provisioned (new leader's list and first batch)",
            format!("{:.2} s into the window", first.as_secs_f64()),
        ));
    }
    rows.push(Row::info(
        "meters: CPU per Meter in that window",
        cpu_start.per_operation(&cpu_end, count),
    ));
    rows.push(Row::info(
        "meters: operator API writes in that window",
        format!(
            "{operator_writes} = {:.2} per Meter = {window_rate:.0} writes/s = {:.0} % of the raw ceiling",
            operator_writes as f64 / count as f64,
            window_rate / raw_rate * 100.0
        ),
    ));
    let back_to_back = create_time + provision_time;
    rows.push(Row::info(
        "meters: apply, then all Provisioned (sum of both)",
        format!(
            "{:.2} s = {:.0} Meters/s",
            back_to_back.as_secs_f64(),
            count as f64 / back_to_back.as_secs_f64()
        ),
    ));
    rows.push(Row::new(
        "meters: operator rate / raw ceiling",
        format!("{:.1} %", ratio * 100.0),
        ">= 70 %",
        Some(ratio >= 0.70),
    ));
    let window_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem = common::leader_memory(client).await?;
    rows.extend(common::memory_rows(
        &format!("meters: operator leader RSS at {count} Meters"),
        &mem,
        100.0,
    ));
    rows.push(outbox_drained(client, ns, window_end).await?);
    rows.push(deprovision_all(&meters, count).await?);
    Ok(rows)
}

/// A mass decommission: the N Meters deleted (`CONCURRENCY` deletes in flight, as `kubectl
/// delete` would send them), timed until the last is gone. A Meter goes only once its finalizer
/// saw device-hub deprovision it, so this is the deprovisioning rate of the whole path.
async fn deprovision_all(meters: &Api<Meter>, count: usize) -> anyhow::Result<Row> {
    let start = Instant::now();
    let (delete_time, errors) = run_concurrent(count, CONCURRENCY, |i| {
        let meters = meters.clone();
        async move {
            meters
                .delete(&format!("m{i:05}"), &DeleteParams::default())
                .await?;
            Ok(())
        }
    })
    .await;
    if errors > 0 {
        bail!("{errors} Meters could not be deleted");
    }
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * count as u32;
    let mut last_report = Instant::now();
    loop {
        let left = remaining(meters).await?;
        if left == 0 {
            break;
        }
        if start.elapsed() > timeout {
            bail!("{left} of {count} deleted Meters still there after {timeout:?}");
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {left}/{count} deleted Meters not yet deprovisioned after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = start.elapsed();
    Ok(Row::info(
        "meters: delete all N → all deprovisioned and gone",
        format!(
            "{:.2} s = {:.0} Meters/s (the deletes themselves {:.2} s)",
            total.as_secs_f64(),
            count as f64 / total.as_secs_f64(),
            delete_time.as_secs_f64()
        ),
    ))
}

/// How many Meters the namespace still holds, from a one-item list (`remainingItemCount`): a full
/// list of thousands of Meters every half second would load the API server being measured.
async fn remaining(meters: &Api<Meter>) -> anyhow::Result<u64> {
    let page = meters
        .list_metadata(&ListParams::default().limit(1))
        .await?;
    Ok(page.items.len() as u64
        + page
            .metadata
            .remaining_item_count
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// device-hub hands every Meter on to smoc-service through its outbox, in batches (contract:
/// smoc-service API): how long after the window until the outbox is empty. Read from device-hub's
/// `mpm_outbox_pending` gauge, which is set at the start of each delivery round (so up to one
/// idle round, 5 s, late).
async fn outbox_drained(client: &Client, ns: &str, window_end: Instant) -> anyhow::Result<Row> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods
        .list(
            &ListParams::default().labels("meterpark.io/hub=bench,meterpark.io/service=device-hub"),
        )
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("no device-hub pod in {ns}"))?;
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = client
            .request_text(http::Request::get(&path).body(Vec::new())?)
            .await?;
        let pending = mpm_e2e::metric(&text, "mpm_outbox_pending{service=\"device-hub\"}");
        if pending == Some(0.0) {
            return Ok(Row::info(
                "meters: device-hub outbox to smoc-service empty",
                format!(
                    "{:.0} s after the window",
                    window_end.elapsed().as_secs_f64()
                ),
            ));
        }
        if Instant::now() > deadline {
            bail!("device-hub's outbox still holds {pending:?} items 10 minutes after the window");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn raw_configmap_patches(client: &Client, ns: &str, count: usize) -> anyhow::Result<f64> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
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
    let (time, errors) = run_concurrent(count, CONCURRENCY, |i| {
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
        bail!("raw: {errors} ConfigMap patches failed");
    }
    Ok(count as f64 / time.as_secs_f64())
}

/// The Meter CRD under another group and kind: identical schema and subresources, watched by nobody.
fn bench_meter_crd() -> anyhow::Result<CustomResourceDefinition> {
    let mut crd = serde_json::to_value(Meter::crd())?;
    crd["metadata"]["name"] = json!(format!("{BENCH_PLURAL}.{BENCH_GROUP}"));
    crd["spec"]["group"] = json!(BENCH_GROUP);
    crd["spec"]["names"] = json!({"kind": "BenchMeter", "listKind": "BenchMeterList",
                                  "plural": BENCH_PLURAL, "singular": "benchmeter"});
    Ok(serde_json::from_value(crd)?)
}

const BENCH_GROUP: &str = "bench.meterpark.io";
const BENCH_PLURAL: &str = "benchmeters";

/// Merge patches of a Provisioned Meter's status on the /status subresource of `count` objects of
/// the Meter schema, one round per number in flight; returns (in flight, patches per second, CPU
/// per patch). The CRD and its objects are removed after.
async fn raw_status_patches(
    client: &Client,
    ns: &str,
    count: usize,
) -> anyhow::Result<Vec<(usize, f64, String)>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = bench_meter_crd()?;
    let crd_name = crd.name_any();
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
    mpm_e2e::wait_for(
        "old BenchMeter CRD gone",
        Duration::from_secs(120),
        || async { Ok(crds.get_opt(&crd_name).await?.is_none().then_some(())) },
    )
    .await?;
    crds.create(&PostParams::default(), &crd).await?;
    let version = Meter::version(&());
    let resource = ApiResource {
        group: BENCH_GROUP.into(),
        version: version.to_string(),
        api_version: format!("{BENCH_GROUP}/{version}"),
        kind: "BenchMeter".into(),
        plural: BENCH_PLURAL.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    mpm_e2e::wait_for("BenchMeter CRD served", Duration::from_secs(60), || async {
        Ok(api
            .list(&ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    let result = async {
        let (_, errors) = run_concurrent(count, CONCURRENCY, |i| {
            let api = api.clone();
            let resource = resource.clone();
            async move {
                let mut obj = DynamicObject::new(&format!("m{i:05}"), &resource);
                obj.data = json!({"spec": serde_json::to_value(meter(i)?.spec)?});
                api.create(&PostParams::default(), &obj).await?;
                Ok(())
            }
        })
        .await;
        if errors > 0 {
            bail!("raw: {errors} BenchMeters not created");
        }
        let mut rates = Vec::new();
        for (round, in_flight) in [CONCURRENCY, 4 * CONCURRENCY].into_iter().enumerate() {
            let cpu_start = CpuSample::take(client).await;
            let (time, errors) = run_concurrent(count, in_flight, |i| {
                let api = api.clone();
                async move {
                    // Each round writes a different generation, so no patch is a no-op.
                    let mut status: serde_json::Value = serde_json::from_str(&status_body(i))?;
                    status["observedGeneration"] = json!(round + 1);
                    api.patch_status(
                        &format!("m{i:05}"),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({ "status": status })),
                    )
                    .await?;
                    Ok(())
                }
            })
            .await;
            if errors > 0 {
                bail!("raw: {errors} status patches failed");
            }
            let cpu = cpu_start.per_operation(&CpuSample::take(client).await, count);
            rates.push((in_flight, count as f64 / time.as_secs_f64(), cpu));
        }
        Ok(rates)
    }
    .await;
    // The API server deletes the N objects before the CRD goes (its cleanup finalizer): several
    // seconds of etcd writes that must not overlap the operator's window.
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
    mpm_e2e::wait_for(
        "BenchMeter CRD and its objects deleted",
        Duration::from_secs(300),
        || async { Ok(crds.get_opt(&crd_name).await?.is_none().then_some(())) },
    )
    .await?;
    result
}

/// Provisioned Meters of `ns` as the leading replica's cache counts them
/// (`mpm_operator_meters{namespace, phase="Provisioned"}`).
async fn provisioned_in_leader_cache(client: &Client, ns: &str) -> anyhow::Result<u64> {
    let text = mpm_e2e::leader_metrics(client).await?;
    let series = format!("mpm_operator_meters{{namespace=\"{ns}\",phase=\"Provisioned\"}}");
    Ok(mpm_e2e::metric(&text, &series).unwrap_or(0.0) as u64)
}

/// Provisioned Meters as the API server has them (paged list).
async fn provisioned_in_api(meters: &Api<Meter>) -> anyhow::Result<u64> {
    let mut provisioned = 0;
    let mut params = ListParams::default().limit(1000);
    loop {
        let page = meters.list(&params).await?;
        provisioned += page
            .items
            .iter()
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == MeterPhase::Provisioned)
            })
            .count() as u64;
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(provisioned),
        }
    }
}
