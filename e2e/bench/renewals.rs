//! Issue 4 (write path of renewals): writing N certificate Secrets (`kubernetes.io/tls`, real PEM
//! from the operator's PKI) with server-side apply and one field manager, as the operator replaces a
//! renewed leaf, against the raw Secret-write rate (plain create, plain replace) in the same run.
//! This measures the API write path only: a true operator-driven renewal of 1,000 leaves would need
//! 1,000 services' certificates falling due at once (and is additionally paced by the operator's
//! `--write-qps`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use mpm_operator::pki::{self, IssuedCert, LeafRequest};

use crate::common::{self, run_concurrent, Row};

const CONCURRENCY: usize = 16;

fn secret(name: &str, leaf: &IssuedCert, resource_version: Option<String>) -> Secret {
    let mut s = Secret {
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(leaf.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(leaf.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    s.metadata.name = Some(name.to_string());
    s.metadata.resource_version = resource_version;
    s.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "mpm-bench".to_string(),
        ),
        ("meterpark.io/hub".to_string(), "bench".to_string()),
    ]));
    s.metadata.annotations = Some(BTreeMap::from([(
        "meterpark.io/certificate-serial".to_string(),
        leaf.serial_hex.clone(),
    )]));
    s
}

fn issue(count: usize) -> anyhow::Result<Vec<IssuedCert>> {
    let now = Utc::now();
    let ca = pki::generate_ca("mpm bench CA", pki::DEFAULT_CA_VALIDITY, now)?;
    (0..count)
        .map(|i| {
            let svc = format!("svc{i:04}");
            let id = pki::spiffe_id("cluster.local", "bench", &format!("bench-{svc}"))?;
            let dns = pki::service_dns_names(&format!("bench-{svc}"), "bench")?;
            Ok(pki::issue_leaf(&ca, &LeafRequest::new(id, dns), now)?)
        })
        .collect()
}

pub async fn run(client: &Client, count: usize) -> anyhow::Result<Vec<Row>> {
    let ns = common::namespace(client, "mpm-bench-certs").await?;
    let result = measure(client, &ns.name, count).await;
    ns.delete().await;
    result
}

async fn measure(client: &Client, ns: &str, count: usize) -> anyhow::Result<Vec<Row>> {
    let t = std::time::Instant::now();
    let first = issue(count)?;
    let renewed = issue(count)?;
    let issued = t.elapsed();
    let pem_bytes = first[0].cert_pem.len() + first[0].key_pem.len();
    eprintln!(
        "  issued {} leaves in {:.2} s ({pem_bytes} bytes of PEM each)",
        2 * count,
        issued.as_secs_f64()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ssa = PatchParams::apply("mpm-operator").force();
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    let mut rows = Vec::new();

    // Raw: plain create of N Secrets (set "raw"), then plain replace (PUT) of each with a new leaf.
    let rvs = std::sync::Mutex::new(vec![None; count]);
    let (create_time, e1) = run_concurrent(count, CONCURRENCY, |i| {
        let (secrets, leaf, rvs) = (secrets.clone(), &first[i], &rvs);
        async move {
            let created = secrets
                .create(
                    &PostParams::default(),
                    &secret(&format!("raw-{i:04}"), leaf, None),
                )
                .await?;
            rvs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] =
                created.metadata.resource_version;
            Ok(())
        }
    })
    .await;
    let rvs = rvs.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (replace_time, e2) = run_concurrent(count, CONCURRENCY, |i| {
        let (secrets, leaf, rv) = (secrets.clone(), &renewed[i], rvs[i].clone());
        async move {
            let name = format!("raw-{i:04}");
            secrets
                .replace(&name, &PostParams::default(), &secret(&name, leaf, rv))
                .await?;
            Ok(())
        }
    })
    .await;

    // Operator path: server-side apply (create, untimed), then the timed renewal: SSA of the new leaf.
    let (_, e3) = run_concurrent(count, CONCURRENCY, |i| {
        let (secrets, leaf, ssa) = (secrets.clone(), &first[i], &ssa);
        async move {
            let name = format!("ssa-{i:04}");
            secrets
                .patch(&name, ssa, &Patch::Apply(&secret(&name, leaf, None)))
                .await?;
            Ok(())
        }
    })
    .await;
    let (renew_time, e4) = run_concurrent(count, CONCURRENCY, |i| {
        let (secrets, leaf, ssa) = (secrets.clone(), &renewed[i], &ssa);
        async move {
            let name = format!("ssa-{i:04}");
            secrets
                .patch(&name, ssa, &Patch::Apply(&secret(&name, leaf, None)))
                .await?;
            Ok(())
        }
    })
    .await;
    if e1 + e2 + e3 + e4 > 0 {
        bail!("{} Secret writes failed", e1 + e2 + e3 + e4);
    }
    let ratio = rate(renew_time) / rate(replace_time);
    rows.push(Row::info(
        "renewals: NOTE",
        "write path only (SSA of renewed tls Secrets); not operator-driven, no --write-qps pacing",
    ));
    rows.push(Row::info(
        "renewals: PEM per Secret",
        format!("{pem_bytes} bytes (ECDSA P-256 leaf + PKCS#8 key)"),
    ));
    rows.push(Row::info(
        "renewals: raw Secret create",
        format!(
            "{:.0} writes/s ({count} in {:.2} s)",
            rate(create_time),
            create_time.as_secs_f64()
        ),
    ));
    rows.push(Row::info(
        "renewals: raw Secret replace (ceiling)",
        format!(
            "{:.0} writes/s ({count} in {:.2} s)",
            rate(replace_time),
            replace_time.as_secs_f64()
        ),
    ));
    rows.push(Row::info(
        &format!("renewals: {count} renewals via SSA"),
        format!(
            "{:.2} s = {:.0} writes/s",
            renew_time.as_secs_f64(),
            rate(renew_time)
        ),
    ));
    rows.push(Row::new(
        "renewals: SSA renewal rate / raw replace",
        format!("{:.1} %", ratio * 100.0),
        ">= 80 %",
        Some(ratio >= 0.80),
    ));
    Ok(rows)
}
