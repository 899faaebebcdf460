//! The kind workflow for users' CI (`.github/workflows/e2e-kind.yml`) cannot run on our machines
//! (no Docker). This test keeps it valid and honest without a cluster: it parses the workflow and
//! checks that it creates the kind cluster with a NetworkPolicy-enforcing CNI (e2e/kind/up:
//! default CNI disabled, Calico applied) and then runs the README's test command, `e2e/test`, with
//! `KIND_CLUSTER` set, i.e. exactly the e2e crate (`MPM_E2E=1 cargo test -p mpm-e2e -- --ignored`) that runs on
//! the local cluster. No `MPM_E2E` gate: nothing here touches a cluster.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn workflow() -> Value {
    serde_saphyr::from_str(&read(".github/workflows/e2e-kind.yml"))
        .unwrap_or_else(|e| panic!("e2e-kind.yml is not valid YAML: {e}"))
}

/// The job's steps and its job-level env.
fn job(wf: &Value) -> (&Vec<Value>, &Value) {
    let jobs = wf["jobs"].as_object().expect("jobs");
    assert_eq!(jobs.len(), 1, "one job: {:?}", jobs.keys());
    let job = jobs.values().next().expect("a job");
    assert!(
        job["runs-on"]
            .as_str()
            .is_some_and(|r| r.starts_with("ubuntu")),
        "runs on a GitHub-hosted Linux runner (Docker available)"
    );
    (job["steps"].as_array().expect("steps"), &job["env"])
}

fn run_of(step: &Value) -> &str {
    step["run"].as_str().unwrap_or("")
}

fn position(steps: &[Value], needle: &str) -> usize {
    steps
        .iter()
        .position(|s| run_of(s).lines().any(|l| l.trim() == needle))
        .unwrap_or_else(|| panic!("no step runs `{needle}`"))
}

#[test]
fn workflow_is_triggered_and_pinned() {
    let wf = workflow();
    assert_eq!(wf["name"], "e2e-kind");
    // YAML 1.2: `on` is a key, not the boolean true.
    let on = wf["on"].as_object().expect("`on` triggers");
    assert!(on.contains_key("pull_request") && on.contains_key("push"));
    let (steps, _) = job(&wf);
    for s in steps {
        if let Some(uses) = s["uses"].as_str() {
            let (_, version) = uses.split_once('@').unwrap_or((uses, ""));
            assert!(!version.is_empty(), "action not pinned: {uses}");
        }
    }
}

#[test]
fn creates_kind_with_a_netpol_enforcing_cni_then_runs_e2e_test_with_kind_cluster() {
    let wf = workflow();
    let (steps, env) = job(&wf);
    let cluster = env["KIND_CLUSTER"].as_str().unwrap_or("");
    assert!(!cluster.is_empty(), "KIND_CLUSTER set for the job");
    assert_eq!(
        env["MPM_E2E_NETPOL_ENFORCED"], "1",
        "the L4 probes of denied connections run on kind"
    );
    assert!(
        env["KIND_VERSION"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "kind version pinned"
    );

    let up = position(steps, "e2e/kind/up");
    let test = position(steps, "e2e/test");
    assert!(up < test, "the cluster exists before the tests run");
    let down = position(steps, "e2e/kind/down");
    assert_eq!(
        steps[down]["if"], "always()",
        "the cluster is deleted also on failure"
    );
    assert!(
        steps[test]["env"]["KIND_CLUSTER"].is_null(),
        "KIND_CLUSTER comes from the job env, the same for every step"
    );

    // e2e/kind/up: kind without its default CNI, with the cluster config, then Calico.
    let kind_up = read("e2e/kind/up");
    assert!(
        kind_up.contains("kind create cluster --name \"$cluster\" --config \"$here/cluster.yaml\"")
    );
    assert!(kind_up.contains("projectcalico/calico/$calico_version/manifests/calico.yaml"));
    assert!(kind_up.contains("rollout status daemonset/calico-node"));
    let config: Value =
        serde_saphyr::from_str(&read("e2e/kind/cluster.yaml")).expect("kind config");
    assert_eq!(config["kind"], "Cluster");
    assert_eq!(config["networking"]["disableDefaultCNI"], true);
    assert_eq!(
        config["networking"]["podSubnet"], "192.168.0.0/16",
        "Calico's default pool"
    );

    // e2e/test with KIND_CLUSTER: no local cluster, images loaded into kind, the same e2e crate.
    let e2e_test = read("e2e/test");
    assert!(e2e_test.contains("if [ -z \"${KIND_CLUSTER:-}\" ]; then"));
    assert!(e2e_test.contains("MPM_E2E=1 cargo test --locked -p mpm-e2e -- --ignored"));
    // The L4 test runs exactly where the CNI enforces NetworkPolicy.
    assert!(e2e_test.contains("[ \"${MPM_E2E_NETPOL_ENFORCED:-}\" = 1 ] || only_enforcing=(--skip denied_edges_are_blocked_at_l4)"));
    assert!(e2e_test.contains("helm install --check"));
    assert!(read("e2e/images.sh").contains("kind load docker-image --name \"$KIND_CLUSTER\""));
}

#[test]
fn scripts_the_workflow_runs_exist_and_are_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let wf = workflow();
    let (steps, _) = job(&wf);
    for s in steps {
        for line in run_of(s).lines() {
            let cmd = line.split_whitespace().next().unwrap_or("");
            if cmd.starts_with("e2e/") {
                let meta = std::fs::metadata(root().join(cmd))
                    .unwrap_or_else(|e| panic!("{cmd} (run by the workflow): {e}"));
                assert!(
                    meta.permissions().mode() & 0o111 != 0,
                    "{cmd} is not executable"
                );
            }
        }
    }
}
