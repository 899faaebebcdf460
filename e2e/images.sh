#!/usr/bin/env bash
# Builds the project's images from this checkout and makes them available to the cluster:
#   localhost/mpm-operator:<version>   operator/Dockerfile
#   localhost/mpm-services:<version>   services/Dockerfile (iec61968-connector, device-hub, smoc-service)
#   localhost/mpm-e2e-probe:<version>  e2e/probe/Dockerfile (smoke test)
# Binaries are static (FROM scratch images). Images go to the local cluster's containerd with
# e2e/cluster/cluster load-image, or into kind with `kind load` when KIND_CLUSTER is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$root/target}"
start=$(date +%s)
echo "[images] building static release binaries (version $version)"
(cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release --locked --target "$target" \
  -p mpm-operator -p mpm-services -p mpm-e2e \
  --bin mpm-operator --bin iec61968-connector --bin device-hub --bin smoc-service --bin mpm-e2e-probe)
bin="$target_dir/$target/release"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
load() {
  local dir=$1 ref=$2
  if [ -n "${KIND_CLUSTER:-}" ]; then
    docker build -q -t "$ref" "$dir" >/dev/null
    kind load docker-image --name "$KIND_CLUSTER" "$ref"
  else
    "$root/e2e/cluster/cluster" load-image "$dir" "$ref"
  fi
}
mkdir -p "$ctx/operator" "$ctx/services" "$ctx/probe"
install -m 0755 "$bin/mpm-operator" "$ctx/operator/" && cp "$root/operator/Dockerfile" "$ctx/operator/"
for b in iec61968-connector device-hub smoc-service; do install -m 0755 "$bin/$b" "$ctx/services/"; done
cp "$root/services/Dockerfile" "$ctx/services/"
install -m 0755 "$bin/mpm-e2e-probe" "$ctx/probe/" && cp "$root/e2e/probe/Dockerfile" "$ctx/probe/"
load "$ctx/operator" "localhost/mpm-operator:$version"
load "$ctx/services" "localhost/mpm-services:$version"
load "$ctx/probe" "localhost/mpm-e2e-probe:$version"
echo "[images] done in $(( $(date +%s) - start ))s"
