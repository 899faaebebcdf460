#!/usr/bin/env bash
# Builds the three service binaries as static executables and assembles a build context for
# services/Dockerfile (FROM scratch) that both `podman build` and `docker build` accept.
#
#   services/build-image.sh <out-context-dir> [image-tag]
#
# With an image tag, also builds the image with podman (or docker when podman is absent).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 <out-context-dir> [image-tag]" >&2
  exit 2
fi
out="$1"
tag="${2:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

(
  cd "$root"
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$target" -p mpm-services \
    --bin iec61968-connector --bin device-hub --bin smoc-service
)

mkdir -p "$out"
for bin in iec61968-connector device-hub smoc-service; do
  src="$target_dir/$target/release/$bin"
  if [[ ! -x "$src" ]]; then
    echo "missing binary $src" >&2
    exit 1
  fi
  # A FROM scratch image has no loader: refuse dynamically linked output.
  if command -v file >/dev/null 2>&1 && file "$src" | grep -q "dynamically linked"; then
    echo "$src is dynamically linked; static build failed" >&2
    exit 1
  fi
  install -m 0755 "$src" "$out/$bin"
done
install -m 0644 "$here/Dockerfile" "$out/Dockerfile"
echo "build context ready: $out"

if [[ -n "$tag" ]]; then
  if command -v podman >/dev/null 2>&1; then
    podman build -t "$tag" "$out"
  elif command -v docker >/dev/null 2>&1; then
    docker build -t "$tag" "$out"
  else
    echo "neither podman nor docker found; context left in $out" >&2
    exit 1
  fi
fi
