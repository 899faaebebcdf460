//! No false positives: the example DeviceHubs, all in one namespace (plus the e2e suite's usual
//! names), pass the isolation checks (issue 16 #2, #5).

use std::path::Path;
use std::sync::Arc;

use mpm_operator::crd::DeviceHub;
use mpm_operator::resources::hub::resolve_services;
use mpm_operator::resources::isolation;

fn example_hubs() -> Vec<DeviceHub> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut hubs = Vec::new();
    for file in ["minimal.yaml", "meter-park.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("example");
        for doc in text.split("\n---") {
            let mut value: serde_json::Value = serde_saphyr::from_str(doc).expect("YAML");
            if value["kind"] == "DeviceHub" {
                // `spec: {}` may be left out in YAML; the API server defaults it.
                if value.get("spec").is_none_or(serde_json::Value::is_null) {
                    value["spec"] = serde_json::json!({});
                }
                hubs.push(serde_json::from_value(value).expect("a DeviceHub"));
            }
        }
    }
    assert!(hubs.len() >= 2, "examples hold DeviceHubs");
    hubs
}

#[test]
fn the_example_hubs_side_by_side_pass() {
    let mut hubs = example_hubs();
    // Extra hubs whose names prefix each other, as the e2e suite creates.
    for name in ["demo", "demo-2", "park-north", "mpm"] {
        let mut h = hubs[0].clone();
        h.metadata.name = Some(name.into());
        hubs.push(h);
    }
    for h in &mut hubs {
        h.metadata.namespace = Some("shared".into());
    }
    let all: Vec<Arc<DeviceHub>> = hubs.iter().cloned().map(Arc::new).collect();
    for h in &hubs {
        let name = h.metadata.name.clone().unwrap();
        let services: Vec<String> = resolve_services(&name, &h.spec)
            .expect("valid spec")
            .into_iter()
            .map(|s| s.name)
            .collect();
        let errors = isolation::validate("shared", h, &services, &all);
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}
