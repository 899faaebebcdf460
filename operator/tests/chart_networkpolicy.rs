//! The chart's NetworkPolicy for the operator (charts/mpm-operator/templates/networkpolicy.yaml)
//! must let the operator reach device-hub on whatever port a DeviceHub gives it (the CRD allows
//! 1024-65535): issue 16, item 11. No helm binary here, so the template is rendered just enough
//! (directive lines dropped, `{{ ... }}` expressions replaced by a placeholder) to parse as YAML.

use std::path::Path;

use serde_json::Value;

fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/mpm-operator/templates/networkpolicy.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Drops lines that are only template directives and replaces inline expressions with `0`
/// (a valid port number and map value alike).
fn render_roughly(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") && !trimmed.contains(':') {
            continue;
        }
        let mut rest = line;
        let mut rendered = String::new();
        while let Some(start) = rest.find("{{") {
            rendered.push_str(&rest[..start]);
            match rest[start..].find("}}") {
                Some(end) => {
                    let expr = &rest[start..start + end + 2];
                    // `include` blocks render a map: keep the YAML shape.
                    rendered.push_str(if expr.contains("include") { "{}" } else { "0" });
                    rest = &rest[start + end + 2..];
                }
                None => {
                    rest = "";
                }
            }
        }
        rendered.push_str(rest);
        out.push_str(&rendered);
        out.push('\n');
    }
    out
}

fn policy() -> Value {
    let yaml = render_roughly(&template());
    serde_saphyr::from_str(&yaml)
        .unwrap_or_else(|e| panic!("rendered template is not YAML: {e}\n{yaml}"))
}

/// Whether an egress rule admits TCP to `port`.
fn admits_tcp(rule: &Value, port: u16) -> bool {
    match rule.get("ports").and_then(Value::as_array) {
        None => true,
        Some(ports) if ports.is_empty() => true,
        Some(ports) => ports.iter().any(|p| {
            let tcp = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP";
            let matches = match p.get("port").and_then(Value::as_u64) {
                None => true,
                Some(start) => {
                    let end = p.get("endPort").and_then(Value::as_u64).unwrap_or(start);
                    (start..=end).contains(&u64::from(port))
                }
            };
            tcp && matches
        }),
    }
}

/// The egress rule whose peer is the pods the operator manages (label managed-by: mpm-operator).
fn managed_pods_rule(policy: &Value) -> Value {
    let egress = policy["spec"]["egress"].as_array().expect("egress rules");
    egress
        .iter()
        .find(|r| {
            r["to"].as_array().is_some_and(|to| {
                to.iter().any(|peer| {
                    peer["podSelector"]["matchLabels"]["app.kubernetes.io/managed-by"]
                        == "mpm-operator"
                })
            })
        })
        .cloned()
        .expect("an egress rule to the managed pods")
}

#[test]
fn the_operator_reaches_device_hub_on_any_port_the_crd_allows() {
    let rule = managed_pods_rule(&policy());
    for port in [8443, 8080, 9443, 1024, 65535] {
        assert!(admits_tcp(&rule, port), "port {port} not admitted: {rule}");
    }
    // No `endPort`: Kubernetes 1.20 does not know it (a policy using it would silently allow
    // only the start port there).
    assert!(!template().contains("endPort:"));
}

#[test]
fn the_rough_renderer_sees_the_rules() {
    let policy = policy();
    assert_eq!(policy["kind"], "NetworkPolicy");
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    // API server, managed pods, DNS.
    assert_eq!(egress.len(), 3, "{egress:?}");
    let dns = &egress[2];
    assert!(admits_tcp(dns, 53));
    assert!(!admits_tcp(dns, 8443), "the DNS rule is not a wildcard");
}

/// The other half: the NetworkPolicy the operator generates for device-hub admits the operator on
/// the port the DeviceHub configures, not on a fixed 8443.
#[test]
fn device_hubs_own_policy_admits_the_operator_on_its_configured_port() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use mpm_operator::acl::{compile, HubTopology, OperatorAccess, ServicePorts};

    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        match_expressions: None,
    };
    let mut device_hub = ServicePorts::new("device-hub");
    device_hub.https_port = 9443;
    let topology = HubTopology {
        namespace: "park".into(),
        hub: "demo".into(),
        trust_domain: "cluster.local".into(),
        services: vec![device_hub],
        operator: OperatorAccess {
            namespace_selector: selector("kubernetes.io/metadata.name", "mpm-system"),
            pod_selector: selector("app.kubernetes.io/name", "mpm-operator"),
        },
    };
    let compiled = compile(&topology, &[]).expect("compiles");
    let acl = compiled
        .network_policies()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("demo-device-hub-acl"))
        .expect("device-hub's acl policy");
    let from_operator: Vec<i32> = acl
        .spec
        .unwrap()
        .ingress
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r.from.iter().flatten().any(|p| {
                p.pod_selector.as_ref() == Some(&selector("app.kubernetes.io/name", "mpm-operator"))
            })
        })
        .flat_map(|r| r.ports.unwrap_or_default())
        .filter_map(|p| match p.port {
            Some(IntOrString::Int(n)) => Some(n),
            _ => None,
        })
        .collect();
    assert!(from_operator.contains(&9443), "{from_operator:?}");
    assert!(!from_operator.contains(&8443), "{from_operator:?}");
}
