//! `netpol matrix` and `acl graph` CLI entry points.

use std::path::PathBuf;

use mpm_operator::cli::acl_graph::{run_graph, AclGraphArgs, GraphFormat};
use mpm_operator::cli::netpol::{run_matrix, MatrixOutput, NetpolMatrixArgs};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netpol/cli")).join(name)
}

fn args(output: MatrixOutput, peers: &[&str]) -> NetpolMatrixArgs {
    NetpolMatrixArgs {
        filename: vec![data("cluster.yaml"), data("policies.json")],
        output,
        peer_ip: peers.iter().map(|p| p.parse().expect("ip")).collect(),
    }
}

fn entries(peers: &[&str]) -> Vec<Value> {
    let out = run_matrix(&args(MatrixOutput::Json, peers)).expect("matrix");
    match serde_json::from_str(&out).expect("json") {
        Value::Array(items) => items,
        other => panic!("expected an array, got {other}"),
    }
}

fn allowed(entries: &[Value], from: &str, to: &str, port: u64, proto: &str) -> Option<bool> {
    entries
        .iter()
        .find(|e| e["from"] == from && e["to"] == to && e["port"] == port && e["protocol"] == proto)
        .and_then(|e| e["allowed"].as_bool())
}

#[test]
fn json_shape_covers_every_pair_and_declared_port() {
    let e = entries(&[]);
    for item in &e {
        let obj = item.as_object().expect("object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{item}");
        for k in ["from", "to", "protocol", "port", "allowed"] {
            assert!(obj.contains_key(k), "{item} lacks {k}");
        }
    }
    // Workloads: default/db (2 ports), shop/cache (2), shop/frontend (1), shop/report (0).
    // Every ordered pair of distinct workloads × the destination's ports: 3 sources for each.
    assert_eq!(e.len(), 3 * 2 + 3 * 2 + 3);
    let froms: std::collections::BTreeSet<&str> =
        e.iter().filter_map(|x| x["from"].as_str()).collect();
    assert_eq!(
        froms.into_iter().collect::<Vec<_>>(),
        ["default/db", "shop/cache", "shop/frontend", "shop/report"]
    );
}

#[test]
fn named_ports_namespaces_cronjobs_and_ip_blocks() {
    let e = entries(&[]);
    // Named port "pg" resolves to 5432 on the db pod; only the labelled namespace's frontend.
    assert_eq!(
        allowed(&e, "shop/frontend", "default/db", 5432, "TCP"),
        Some(true)
    );
    assert_eq!(
        allowed(&e, "shop/frontend", "default/db", 9187, "TCP"),
        Some(false)
    );
    assert_eq!(
        allowed(&e, "shop/cache", "default/db", 5432, "TCP"),
        Some(false)
    );
    // The CronJob's egress reaches db only through the ipBlock on the Pod's IP, and ingress denies it.
    assert_eq!(
        allowed(&e, "shop/report", "default/db", 5432, "TCP"),
        Some(false)
    );
    assert_eq!(
        allowed(&e, "shop/report", "shop/cache", 6379, "TCP"),
        Some(false)
    );
    // Pods without IP (workload templates) never match ipBlocks: frontend accepts nobody in-cluster.
    assert_eq!(
        allowed(&e, "shop/cache", "shop/frontend", 8080, "TCP"),
        Some(false)
    );
    // But the db pod has an IP inside 0.0.0.0/0.
    assert_eq!(
        allowed(&e, "default/db", "shop/frontend", 8080, "TCP"),
        Some(true)
    );
    assert_eq!(
        allowed(&e, "shop/frontend", "shop/cache", 53, "UDP"),
        Some(true)
    );
}

#[test]
fn peer_ip_is_source_and_destination() {
    let e = entries(&["203.0.113.9", "198.51.100.1"]);
    assert_eq!(
        allowed(&e, "203.0.113.9", "shop/frontend", 8080, "TCP"),
        Some(true)
    );
    assert_eq!(
        allowed(&e, "198.51.100.1", "shop/frontend", 8080, "TCP"),
        Some(false),
        "except"
    );
    assert_eq!(
        allowed(&e, "203.0.113.9", "default/db", 5432, "TCP"),
        Some(false)
    );
    // External destinations are probed on the ports egress rules mention: 443 and 5432.
    assert_eq!(
        allowed(&e, "shop/report", "203.0.113.9", 443, "TCP"),
        Some(true)
    );
    assert_eq!(
        allowed(&e, "shop/report", "198.51.100.1", 443, "TCP"),
        Some(false)
    );
    assert_eq!(
        allowed(&e, "shop/report", "203.0.113.9", 5432, "TCP"),
        Some(false)
    );
    assert_eq!(
        allowed(&e, "shop/cache", "198.51.100.1", 443, "TCP"),
        Some(true)
    );
    assert!(
        e.iter()
            .all(|x| !(x["from"] == "203.0.113.9" && x["to"] == "198.51.100.1")),
        "no external pairs"
    );
}

#[test]
fn table_is_aligned() {
    let out = run_matrix(&args(MatrixOutput::Table, &[])).expect("matrix");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("FROM"));
    let col = lines[0].find("TO").expect("TO column");
    for l in &lines[1..] {
        assert_eq!(l.as_bytes().get(col - 1), Some(&b' '), "{l}");
        assert!(l.ends_with("allowed") || l.ends_with("denied"), "{l}");
    }
    assert!(
        out.contains("shop/frontend  default/db     5432/TCP  allowed"),
        "{out}"
    );
}

#[test]
fn errors_name_the_file() {
    let err = run_matrix(&NetpolMatrixArgs {
        filename: vec![data("does-not-exist.yaml")],
        output: MatrixOutput::Json,
        peer_ip: vec![],
    })
    .expect_err("missing file");
    assert!(format!("{err:#}").contains("does-not-exist.yaml"));
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nope}}]}]}\n")
        .expect("write");
    let err = run_matrix(&NetpolMatrixArgs {
        filename: vec![bad],
        output: MatrixOutput::Json,
        peer_ip: vec![],
    })
    .expect_err("invalid cidr");
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
}

#[test]
fn graph_dot_and_mermaid_from_multi_doc_yaml() {
    let dot = run_graph(&AclGraphArgs {
        filename: data("acl.yaml"),
        format: GraphFormat::Dot,
    })
    .expect("dot");
    assert!(
        dot.contains("\"iec61968-connector\" -> \"device-hub\" [label=\"https POST /v1/events\"];"),
        "{dot}"
    );
    assert!(dot.contains("\"device-hub\" -> \"smoc-service\" [label=\"8443\"];"));
    assert!(dot.contains("style=dashed, color=red"));
    let mermaid = run_graph(&AclGraphArgs {
        filename: data("acl.yaml"),
        format: GraphFormat::Mermaid,
    })
    .expect("mermaid");
    assert!(
        mermaid.contains("iec61968_connector -.-x|\"deny\"| smoc_service"),
        "{mermaid}"
    );
}

#[test]
fn clap_parses_repeatable_flags() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NetpolMatrixArgs,
    }
    let cli = Cli::try_parse_from([
        "x",
        "-f",
        "a.yaml",
        "--filename",
        "b.json",
        "--output",
        "json",
        "--peer-ip",
        "10.0.0.1",
        "--peer-ip",
        "::1",
    ])
    .expect("parse");
    assert_eq!(cli.args.filename.len(), 2);
    assert_eq!(cli.args.output, MatrixOutput::Json);
    assert_eq!(cli.args.peer_ip.len(), 2);
}
