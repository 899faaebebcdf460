//! ServiceACL compiler: validation errors, generated objects, allowed-peers, verification.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use mpm_operator::acl::{compile, AclError, HubTopology, NamedPort, OperatorAccess, ServicePorts};
use mpm_operator::crd::service_acl::{ServiceAclSpec, ViolationKind};
use mpm_operator::netpol::{self, Endpoint, Evaluator, NamespaceInfo, PodInfo, Protocol};

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn topology() -> HubTopology {
    let mut connector = ServicePorts::new("iec61968-connector");
    connector.extra_ports.push(NamedPort {
        name: "ingest".into(),
        port: 8090,
    });
    HubTopology {
        namespace: "park".into(),
        hub: "demo".into(),
        trust_domain: "cluster.local".into(),
        services: vec![
            ServicePorts::new("device-hub"),
            connector,
            ServicePorts::new("smoc-service"),
        ],
        operator: OperatorAccess {
            namespace_selector: selector(&[("kubernetes.io/metadata.name", "mpm-system")]),
            pod_selector: selector(&[("app.kubernetes.io/name", "mpm-operator")]),
        },
    }
}

fn spec(yaml: &str) -> ServiceAclSpec {
    serde_saphyr::from_str(yaml).expect("valid ServiceACL spec")
}

const DEMO: &str = r#"
hubRef: {name: demo}
allow:
  - name: connector-events
    from: iec61968-connector
    to: device-hub
    http: {methods: [POST], pathPrefixes: [/v1/events]}
  - name: hub-to-smoc
    from: device-hub
    to: smoc-service
    http: {methods: [PUT, DELETE, POST], pathPrefixes: [/v1/devices/, /v1/readings]}
deny:
  - name: connector-never-smoc
    from: iec61968-connector
    to: smoc-service
ingress:
  - name: hes-ingest
    to: iec61968-connector
    from: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{port: 8090}]
egress:
  - name: to-hes
    from: iec61968-connector
    to: [{ipBlock: {cidr: 198.51.100.10/32}}]
    ports: [{port: 443, protocol: TCP}]
metricsScrape:
  from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}, podSelector: {matchLabels: {app: prometheus}}}]
"#;

#[test]
fn unknown_service_names_the_rule() {
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\nallow: [{name: r1, from: nope, to: device-hub}]",
        )],
    )
    .expect_err("unknown service");
    assert!(
        matches!(&err, AclError::UnknownService { rule, service, .. } if rule == "r1" && service == "nope"),
        "{err}"
    );
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\nallow: [{from: device-hub, to: ghost}]",
        )],
    )
    .expect_err("unknown target");
    assert!(
        matches!(&err, AclError::UnknownService { rule, .. } if rule == "allow[0]"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("device-hub, iec61968-connector, smoc-service"));
}

#[test]
fn port_not_exposed() {
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\nallow: [{from: device-hub, to: smoc-service, ports: [8090]}]",
        )],
    )
    .expect_err("8090 only on the connector");
    assert!(
        matches!(&err, AclError::PortNotExposed { rule, service, port: 8090, .. } if rule == "allow[0]" && service == "smoc-service"),
        "{err}"
    );
    // The connector does expose 8090.
    compile(&topology(), &[spec("hubRef: {name: demo}\nallow: [{from: device-hub, to: iec61968-connector, ports: [8090, 8443]}]")])
        .expect("8090 exposed by the connector");
    let err = compile(
        &topology(),
        &[spec("hubRef: {name: demo}\ningress: [{to: smoc-service, from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 9999}]}]")],
    )
    .expect_err("ingress port");
    assert!(matches!(err, AclError::PortNotExposed { port: 9999, .. }));
}

#[test]
fn allow_contradicting_deny_is_rejected_across_acls() {
    let a = spec("hubRef: {name: demo}\ndeny: [{name: never, from: device-hub, to: smoc-service}]");
    let b = spec("hubRef: {name: demo}\nallow: [{name: oops, from: device-hub, to: smoc-service}]");
    let err = compile(&topology(), &[a, b]).expect_err("contradiction");
    assert_eq!(
        err,
        AclError::ContradictsDeny {
            rule: "acl[1].oops".into(),
            deny_rule: "acl[0].never".into(),
            from: "device-hub".into(),
            to: "smoc-service".into()
        }
    );
    // The reverse direction is a different edge.
    let a = spec("hubRef: {name: demo}\ndeny: [{from: device-hub, to: smoc-service}]\nallow: [{from: smoc-service, to: device-hub}]");
    compile(&topology(), &[a]).expect("reverse edge is fine");
}

#[test]
fn self_edges_are_rejected() {
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\nallow: [{from: device-hub, to: device-hub}]",
        )],
    )
    .expect_err("self");
    assert!(matches!(err, AclError::SelfEdge { ref service, .. } if service == "device-hub"));
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\ndeny: [{name: d, from: smoc-service, to: smoc-service}]",
        )],
    )
    .expect_err("self deny");
    assert!(matches!(err, AclError::SelfEdge { ref rule, .. } if rule == "d"));
}

#[test]
fn other_invalid_inputs() {
    let err = compile(&topology(), &[spec("hubRef: {name: other}")]).expect_err("wrong hub");
    assert!(matches!(err, AclError::WrongHub { .. }));
    let err = compile(
        &topology(),
        &[spec("hubRef: {name: demo}\negress: [{name: e, from: device-hub, to: [{ipBlock: {cidr: 300.0.0.0/8}}], ports: [{port: 443}]}]")],
    )
    .expect_err("cidr");
    assert_eq!(
        err,
        AclError::InvalidCidr {
            rule: "e".into(),
            cidr: "300.0.0.0/8".into()
        }
    );
    let err = compile(
        &topology(),
        &[spec(
            "hubRef: {name: demo}\ningress: [{to: device-hub, from: [], ports: [{port: 8443}]}]",
        )],
    )
    .expect_err("empty peers");
    assert!(matches!(err, AclError::InvalidRule { ref rule, .. } if rule == "ingress[0]"));
    let err = compile(
        &topology(),
        &[spec("hubRef: {name: demo}\nmetricsScrape: {from: [{}]}")],
    )
    .expect_err("empty peer");
    assert!(matches!(err, AclError::InvalidRule { ref rule, .. } if rule == "metricsScrape"));
    let err = compile(
        &topology(),
        &[spec("hubRef: {name: demo}\nmetricsScrape: {from: [{podSelector: {matchExpressions: [{key: a, operator: Near}]}}]}")],
    )
    .expect_err("selector");
    assert!(matches!(err, AclError::InvalidSelector { .. }));
    let mut t = topology();
    t.hub = "h".repeat(50);
    let err = compile(&t, &[]).expect_err("name too long");
    assert!(matches!(err, AclError::NameTooLong { .. }));
}

#[test]
fn generated_policies_follow_the_contract() {
    let compiled = compile(&topology(), &[spec(DEMO)]).expect("valid");
    assert_eq!(compiled.allowed_edges(), 2);
    let policies = compiled.network_policies();
    let names: Vec<&str> = policies
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert_eq!(
        names,
        [
            "demo-device-hub-default-deny",
            "demo-device-hub-acl",
            "demo-iec61968-connector-default-deny",
            "demo-iec61968-connector-acl",
            "demo-smoc-service-default-deny",
            "demo-smoc-service-acl"
        ]
    );
    for p in &policies {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
            "meterpark.io/hub",
            "meterpark.io/service",
        ] {
            assert!(
                labels.contains_key(key),
                "{:?} lacks {key}",
                p.metadata.name
            );
        }
        assert_eq!(p.metadata.namespace.as_deref(), Some("park"));
        let json = serde_json::to_value(p).expect("json");
        let text = json.to_string();
        assert!(!text.contains("endPort"), "no endPort: {text}");
        let spec = &json["spec"];
        assert_eq!(
            spec["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        for dir in ["ingress", "egress"] {
            for rule in spec[dir].as_array().into_iter().flatten() {
                for port in rule["ports"].as_array().into_iter().flatten() {
                    assert!(port["protocol"].is_string(), "explicit protocol: {port}");
                    assert!(port["port"].is_number(), "numeric port: {port}");
                }
            }
        }
    }
    let deny = &compiled.services["device-hub"].default_deny;
    let spec = deny.spec.clone().unwrap_or_default();
    assert!(spec.ingress.is_none() && spec.egress.is_none());
    assert_eq!(
        spec.pod_selector.and_then(|s| s.match_labels),
        Some(BTreeMap::from([
            ("meterpark.io/hub".to_string(), "demo".to_string()),
            ("meterpark.io/service".to_string(), "device-hub".to_string())
        ]))
    );
}

#[test]
fn allowed_peers_json_is_sorted_and_deterministic() {
    let compiled = compile(&topology(), &[spec(DEMO)]).expect("valid");
    let hub = compiled.services["device-hub"].allowed_peers_json();
    let v: serde_json::Value = serde_json::from_str(&hub).expect("json");
    assert_eq!(
        v,
        serde_json::json!({
            "version": 1,
            "service": "device-hub",
            "peers": [
                {"spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
                 "methods": ["POST"], "pathPrefixes": ["/v1/events"]},
                {"spiffeId": "spiffe://cluster.local/ns/park/sa/mpm-operator"}
            ]
        })
    );
    let smoc: serde_json::Value =
        serde_json::from_str(&compiled.services["smoc-service"].allowed_peers_json())
            .expect("json");
    assert_eq!(
        smoc["peers"][0]["methods"],
        serde_json::json!(["DELETE", "POST", "PUT"])
    );
    let connector: serde_json::Value =
        serde_json::from_str(&compiled.services["iec61968-connector"].allowed_peers_json())
            .expect("json");
    assert_eq!(connector["peers"], serde_json::json!([]));
    let again = compile(&topology(), &[spec(DEMO)]).expect("valid");
    assert_eq!(again.services["device-hub"].allowed_peers_json(), hub);
}

#[test]
fn merged_rules_union_ports_but_keep_l7_per_rule() {
    let a = spec("hubRef: {name: demo}\nallow: [{from: device-hub, to: iec61968-connector, ports: [8443], http: {methods: [GET]}}]");
    let b = spec("hubRef: {name: demo}\nallow: [{from: device-hub, to: iec61968-connector, ports: [8090], http: {methods: [PUT]}}]");
    let compiled = compile(&topology(), &[a, b]).expect("valid");
    assert_eq!(compiled.edges.len(), 1);
    assert_eq!(
        compiled.edges[0].ports.iter().copied().collect::<Vec<_>>(),
        [8090, 8443]
    );
    let peers = &compiled.services["iec61968-connector"].allowed_peers.peers;
    let methods: Vec<_> = peers.iter().map(|p| p.methods.clone()).collect();
    assert_eq!(
        methods,
        [Some(vec!["GET".to_string()]), Some(vec!["PUT".to_string()])]
    );
    assert!(peers.iter().all(|p| p.path_prefixes.is_none()));
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ports: &[u16]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![],
        ports: ports
            .iter()
            .map(|&p| netpol::ContainerPort {
                name: None,
                port: p,
                protocol: Protocol::Tcp,
            })
            .collect(),
    }
}

#[test]
fn operator_metrics_dns_and_external_rules_are_enforced() {
    let compiled = compile(&topology(), &[spec(DEMO)]).expect("valid");
    let svc = |s: &str| {
        pod(
            "park",
            s,
            &[("meterpark.io/hub", "demo"), ("meterpark.io/service", s)],
            &[8443, 8080, 8090],
        )
    };
    let pods = vec![
        svc("device-hub"),
        svc("iec61968-connector"),
        svc("smoc-service"),
        pod(
            "mpm-system",
            "operator",
            &[("app.kubernetes.io/name", "mpm-operator")],
            &[],
        ),
        pod("monitoring", "prometheus", &[("app", "prometheus")], &[]),
        pod("monitoring", "grafana", &[("app", "grafana")], &[]),
        pod("kube-system", "coredns", &[("k8s-app", "kube-dns")], &[53]),
    ];
    let ev = Evaluator::new(
        vec![NamespaceInfo::named("park")],
        pods,
        &compiled.network_policies(),
    )
    .expect("evaluator");
    let p = |ns: &str, n: &str| Endpoint::Pod(ev.pod_id(ns, n).expect("pod"));
    let (hub, conn, smoc) = (
        p("park", "device-hub"),
        p("park", "iec61968-connector"),
        p("park", "smoc-service"),
    );
    let op = p("mpm-system", "operator");
    assert!(ev.allowed(&op, &hub, 8443, Protocol::Tcp));
    assert!(!ev.allowed(&op, &smoc, 8443, Protocol::Tcp));
    // The operator reads every service's /status on the health port (CA rotation).
    for s in [&hub, &conn, &smoc] {
        assert!(ev.allowed(&op, s, 8080, Protocol::Tcp));
    }
    assert!(!ev.allowed(&op, &conn, 8443, Protocol::Tcp));
    let prom = p("monitoring", "prometheus");
    for s in [&hub, &conn, &smoc] {
        assert!(ev.allowed(&prom, s, 8080, Protocol::Tcp));
        assert!(!ev.allowed(&prom, s, 8443, Protocol::Tcp));
        assert!(!ev.allowed(&p("monitoring", "grafana"), s, 8080, Protocol::Tcp));
        let dns = p("kube-system", "coredns");
        assert!(ev.allowed(s, &dns, 53, Protocol::Udp));
        assert!(ev.allowed(s, &dns, 53, Protocol::Tcp));
    }
    let ext = |s: &str| Endpoint::External(s.parse().expect("ip"));
    assert!(ev.allowed(&ext("192.0.2.7"), &conn, 8090, Protocol::Tcp));
    assert!(!ev.allowed(&ext("192.0.2.7"), &conn, 8443, Protocol::Tcp));
    assert!(!ev.allowed(&ext("192.0.2.7"), &hub, 8090, Protocol::Tcp));
    assert!(ev.allowed(&conn, &ext("198.51.100.10"), 443, Protocol::Tcp));
    assert!(!ev.allowed(&hub, &ext("198.51.100.10"), 443, Protocol::Tcp));
    assert!(ev.allowed(&conn, &hub, 8443, Protocol::Tcp));
    assert!(!ev.allowed(&hub, &conn, 8443, Protocol::Tcp));
    assert!(!ev.allowed(&conn, &smoc, 8443, Protocol::Tcp));
}

#[test]
fn verify_reports_matrix_and_violations() {
    let acl = spec(DEMO);
    let compiled = compile(&topology(), std::slice::from_ref(&acl)).expect("valid");
    let ok = netpol::verify(
        std::slice::from_ref(&acl),
        &topology(),
        &compiled.network_policies(),
    )
    .expect("verify");
    assert!(ok.verified(), "{:?}", ok.violations);
    assert_eq!(ok.allowed_edges, 2);
    // 3 services × 2 destinations; the connector exposes 3 ports, the others 2.
    assert_eq!(ok.matrix.len(), 2 * 2 + 2 * 3 + 2 * 2);
    let allowed: Vec<_> = ok
        .matrix
        .iter()
        .filter(|e| e.allowed)
        .map(|e| (e.from.as_str(), e.to.as_str(), e.port))
        .collect();
    assert_eq!(
        allowed,
        [
            ("device-hub", "smoc-service", 8443),
            ("iec61968-connector", "device-hub", 8443)
        ]
    );

    // Without smoc-service's acl policy, device-hub -> smoc-service is blocked at ingress.
    let without: Vec<NetworkPolicy> = compiled
        .network_policies()
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some("demo-smoc-service-acl"))
        .collect();
    let v = netpol::verify(std::slice::from_ref(&acl), &topology(), &without).expect("verify");
    assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
    let blocked = &v.violations[0];
    assert_eq!(blocked.kind, ViolationKind::AllowBlocked);
    assert_eq!(blocked.rule, "hub-to-smoc");
    assert_eq!(
        (blocked.from.as_str(), blocked.to.as_str(), blocked.port),
        ("device-hub", "smoc-service", Some(8443))
    );
    assert_eq!(
        blocked.network_policy.as_deref(),
        Some("park/demo-smoc-service-default-deny")
    );
    assert!(
        blocked.message.contains(
            "ingress of smoc-service is isolated by [park/demo-smoc-service-default-deny]"
        ),
        "{}",
        blocked.message
    );

    // An extra allow-all ingress policy makes the deny invariant (and default deny) reachable.
    let mut with_hole = compiled.network_policies();
    with_hole.push(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "oops", "namespace": "park"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]}
        }))
        .expect("policy"),
    );
    let v = netpol::verify(&[acl], &topology(), &with_hole).expect("verify");
    let deny: Vec<_> = v
        .violations
        .iter()
        .filter(|x| x.rule == "connector-never-smoc")
        .collect();
    assert_eq!(
        deny.len(),
        2,
        "https and health of smoc-service: {:?}",
        v.violations
    );
    assert!(deny.iter().all(|x| x.kind == ViolationKind::DenyReachable
        && x.network_policy.as_deref() == Some("park/oops")));
    assert!(v
        .violations
        .iter()
        .any(|x| x.rule == "defaultAction" && x.from == "smoc-service" && x.to == "device-hub"));
}
