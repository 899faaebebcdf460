//! ServiceACL L7 (HTTP) rules: rules of one caller stay separate grants, prefixes are checked and
//! match by segment, malformed restrictions are refused naming the rule and field (issue 16).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use mpm_operator::acl::{compile, HubTopology, OperatorAccess, ServicePorts};
use mpm_operator::crd::service_acl::ServiceAclSpec;

fn topology() -> HubTopology {
    let sel = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        match_expressions: None,
    };
    HubTopology {
        namespace: "park".into(),
        hub: "demo".into(),
        trust_domain: "cluster.local".into(),
        services: vec![
            ServicePorts::new("device-hub"),
            ServicePorts::new("iec61968-connector"),
            ServicePorts::new("smoc-service"),
        ],
        operator: OperatorAccess {
            namespace_selector: sel("kubernetes.io/metadata.name", "mpm-system"),
            pod_selector: sel("app.kubernetes.io/name", "mpm-operator"),
        },
    }
}

fn spec(yaml: &str) -> ServiceAclSpec {
    serde_saphyr::from_str(yaml).expect("valid ServiceACL spec")
}

/// What a service does with one entry of allowed-peers.json (contract semantics, written out here
/// independently of the operator's code): methods AND segment-aware prefixes.
fn entry_allows(entry: &serde_json::Value, method: &str, path: &str) -> bool {
    let methods_ok = entry
        .get("methods")
        .and_then(|m| m.as_array())
        .is_none_or(|ms| ms.iter().any(|m| m == method));
    let path_ok = entry
        .get("pathPrefixes")
        .and_then(|p| p.as_array())
        .is_none_or(|ps| {
            ps.iter().filter_map(|p| p.as_str()).any(|p| {
                path.strip_prefix(p).is_some_and(|rest| {
                    rest.is_empty() || p.ends_with('/') || rest.starts_with('/')
                })
            })
        });
    methods_ok && path_ok
}

fn peer_allows(doc: &serde_json::Value, peer: &str, method: &str, path: &str) -> bool {
    doc["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["spiffeId"] == peer)
        .any(|e| entry_allows(e, method, path))
}

const CONNECTOR: &str = "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector";

/// Issue 16 item 3: `GET /v1/meters/` and `DELETE /v1/admin/` of one caller must not become
/// `{GET, DELETE} x {/v1/meters/, /v1/admin/}`. The exact bytes are also the fixture of the
/// services test `two_rules_of_one_caller_do_not_widen_each_other`.
#[test]
fn two_rules_of_one_pair_stay_two_entries() {
    let acl = spec(
        "hubRef: {name: demo}
allow:
  - {name: read-meters, from: iec61968-connector, to: device-hub, http: {methods: [GET], pathPrefixes: [/v1/meters/]}}
  - {name: admin-delete, from: iec61968-connector, to: device-hub, http: {methods: [DELETE], pathPrefixes: [/v1/admin/]}}
",
    );
    let compiled = compile(&topology(), &[acl]).expect("valid");
    let json = compiled.services["device-hub"].allowed_peers_json();
    assert_eq!(
        json,
        r#"{
  "version": 1,
  "service": "device-hub",
  "peers": [
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": [
        "DELETE"
      ],
      "pathPrefixes": [
        "/v1/admin/"
      ]
    },
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": [
        "GET"
      ],
      "pathPrefixes": [
        "/v1/meters/"
      ]
    },
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/mpm-operator"
    }
  ]
}
"#
    );
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(peer_allows(&doc, CONNECTOR, "GET", "/v1/meters/x"));
    assert!(peer_allows(&doc, CONNECTOR, "DELETE", "/v1/admin/x"));
    assert!(!peer_allows(&doc, CONNECTOR, "DELETE", "/v1/meters/x"));
    assert!(!peer_allows(&doc, CONNECTOR, "GET", "/v1/admin/x"));
    // The network level is still one edge (ports are a union, which widens nothing at L7).
    assert_eq!(compiled.edges.len(), 1);
    // Deterministic bytes.
    let again = compile(
        &topology(),
        &[spec(
            &serde_json::to_string(&serde_json::json!({
                "hubRef": {"name": "demo"},
                "allow": [
                    {"name": "admin-delete", "from": "iec61968-connector", "to": "device-hub",
                     "http": {"methods": ["DELETE"], "pathPrefixes": ["/v1/admin/"]}},
                    {"name": "read-meters", "from": "iec61968-connector", "to": "device-hub",
                     "http": {"methods": ["GET"], "pathPrefixes": ["/v1/meters/"]}}
                ]
            }))
            .expect("json"),
        )],
    )
    .expect("valid");
    assert_eq!(again.services["device-hub"].allowed_peers_json(), json);
}

/// An unrestricted rule next to a restricted one: the caller gets both grants, identical entries
/// appear once.
#[test]
fn unrestricted_and_duplicate_rules() {
    let acl = spec(
        "hubRef: {name: demo}
allow:
  - {from: iec61968-connector, to: device-hub, http: {methods: [GET], pathPrefixes: [/v1/]}}
  - {from: iec61968-connector, to: device-hub, http: {methods: [GET], pathPrefixes: [/v1/]}}
  - {from: smoc-service, to: device-hub}
",
    );
    let compiled = compile(&topology(), &[acl]).expect("valid");
    let doc: serde_json::Value =
        serde_json::from_str(&compiled.services["device-hub"].allowed_peers_json()).expect("json");
    let peers = doc["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 3, "{doc}");
    assert_eq!(
        peers[1],
        serde_json::json!({"spiffeId": "spiffe://cluster.local/ns/park/sa/demo-smoc-service"})
    );
}

/// Issue 16 item 4: an empty prefix admitted every path; empty lists, malformed prefixes and
/// unknown methods are refused with the rule and field named.
#[test]
fn malformed_http_restrictions_are_refused_naming_rule_and_field() {
    let cases = [
        (r#"{methods: [GET], pathPrefixes: [""]}"#, "pathPrefixes[0]"),
        (r#"{methods: [GET], pathPrefixes: []}"#, "pathPrefixes"),
        (r#"{methods: [], pathPrefixes: [/v1/]}"#, "methods"),
        (r#"{methods: [get]}"#, "methods[0]"),
        (r#"{methods: [GET, TRACE]}"#, "methods[1]"),
        (r#"{pathPrefixes: [/v1/, /v1/../admin]}"#, "pathPrefixes[1]"),
        (r#"{pathPrefixes: [v1/]}"#, "pathPrefixes[0]"),
        (r#"{pathPrefixes: ["/v1//x"]}"#, "pathPrefixes[0]"),
        (r#"{pathPrefixes: ["/v1/%2e%2e/"]}"#, "pathPrefixes[0]"),
    ];
    for (http, field) in cases {
        let acl = spec(&format!(
            "hubRef: {{name: demo}}\nallow:\n  - {{name: bad, from: iec61968-connector, to: device-hub, http: {http}}}\n"
        ));
        let err = compile(&topology(), &[acl]).expect_err(http).to_string();
        assert!(
            err.contains("rule bad") && err.contains(&format!("http.{field}")),
            "{http}: {err}"
        );
    }
}

use proptest::prelude::*;

const METHODS: [&str; 4] = ["GET", "PUT", "DELETE", "POST"];
const PREFIXES: [&str; 6] = [
    "/v1/",
    "/v1/meters",
    "/v1/meters/",
    "/v1/meters/SN-1",
    "/v1/admin/",
    "/",
];
const PATHS: [&str; 8] = [
    "/v1/meters",
    "/v1/meters/",
    "/v1/meters/SN-1",
    "/v1/meters/SN-10",
    "/v1/meters/SN-1/x",
    "/v1/admin/x",
    "/v2/x",
    "/v1/metersX",
];

type RandomRule = (Option<Vec<usize>>, Option<Vec<usize>>);

fn rule() -> impl Strategy<Value = RandomRule> {
    (
        proptest::option::of(proptest::collection::vec(0..METHODS.len(), 1..3)),
        proptest::option::of(proptest::collection::vec(0..PREFIXES.len(), 1..3)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For random rules of one caller, a (method, path) is allowed by the compiled allowed-peers
    /// list exactly when one single rule allows it: the compiled list never grants more.
    #[test]
    fn compiled_list_allows_exactly_what_one_rule_allows(rules in proptest::collection::vec(rule(), 1..4)) {
        let allow: Vec<serde_json::Value> = rules.iter().map(|(m, p)| {
            let mut http = serde_json::Map::new();
            if let Some(m) = m { http.insert("methods".into(), m.iter().map(|i| METHODS[*i]).collect()); }
            if let Some(p) = p { http.insert("pathPrefixes".into(), p.iter().map(|i| PREFIXES[*i]).collect()); }
            serde_json::json!({"from": "iec61968-connector", "to": "smoc-service", "http": http})
        }).collect();
        let acl = spec(&serde_json::json!({"hubRef": {"name": "demo"}, "allow": allow}).to_string());
        let compiled = compile(&topology(), &[acl]).expect("valid");
        let doc: serde_json::Value =
            serde_json::from_str(&compiled.services["smoc-service"].allowed_peers_json()).expect("json");
        for method in METHODS {
            for path in PATHS {
                let by_rule = rules.iter().any(|(m, p)| {
                    m.as_ref().is_none_or(|m| m.iter().any(|i| METHODS[*i] == method))
                        && p.as_ref().is_none_or(|p| p.iter().any(|i| {
                            let pre = PREFIXES[*i];
                            path.strip_prefix(pre).is_some_and(|r| r.is_empty() || pre.ends_with('/') || r.starts_with('/'))
                        }))
                });
                prop_assert_eq!(peer_allows(&doc, CONNECTOR, method, path), by_rule, "{} {}", method, path);
            }
        }
    }
}
