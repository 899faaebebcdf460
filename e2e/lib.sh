# Shared by e2e/up and e2e/test. Sourced, not run.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="$ROOT/e2e/cluster/cluster"
HELM_VENV="${MPM_HELM_VENV:-/opt/mpm-helm-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
T0=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# Points KUBECONFIG at the local cluster unless a cluster is already chosen (kind in users' CI).
use_cluster() {
  if [ -z "${KIND_CLUSTER:-}" ]; then
    export KUBECONFIG="$("$CLUSTER" kubeconfig)"
  fi
}

# Helm runs as a Go library from PyPI (no helm binary exists here), in a venv outside the checkout.
ensure_helm() {
  if ! "$HELM_VENV/bin/python" -c 'import helm_sdkpy' 2>/dev/null; then
    step "installing helm-sdkpy into $HELM_VENV"
    python3 -m venv "$HELM_VENV"
    "$HELM_VENV/bin/pip" install -q --ignore-requires-python -r "$ROOT/e2e/helm/requirements.txt"
  fi
}
helm() { "$HELM_VENV/bin/python" "$ROOT/e2e/helm/mpm-helm" "$@"; }

wait_rollout() {
  local ns=$1 deploy=$2 timeout=${3:-180}
  kubectl -n "$ns" rollout status "deployment/$deploy" --timeout="${timeout}s"
}
