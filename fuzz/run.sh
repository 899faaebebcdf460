#!/usr/bin/env bash
# Fuzzes every target (or the ones named) with libFuzzer through cargo-fuzz, starting from the
# committed seeds (fuzz/seeds/<target>/, read only; new inputs go to a corpus outside the checkout).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      # default: 10 s per target, a dev build (the smoke run
#                                          # of the test command)
#   FUZZ_RELEASE=1 fuzz/run.sh 600         # the long run: optimised build, 10 minutes per target
#
# cargo-fuzz is installed once into /var/cache/mpm-operator/cargo-fuzz and builds into
# /var/cache/mpm-operator/fuzz-target (both outside the checkout, kept between runs). The machine's
# toolchain is stable; cargo-fuzz's flags need RUSTC_BOOTSTRAP=1 there. No sanitizer: the code is
# safe Rust, and libFuzzer still reports panics, aborts, stack overflows, leaks of the whole input
# budget (-rss_limit_mb) and timeouts. A crash leaves its input in $FUZZ_CORPUS/<target>/artifacts/
# and fails the run; add it to fuzz/seeds/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=/var/cache/mpm-operator
CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${1:-10}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
FUZZ_CORPUS=${FUZZ_CORPUS:-$CACHE/fuzz-corpus}
export CARGO_TARGET_DIR=$CACHE/fuzz-target

cargo_fuzz=$CACHE/cargo-fuzz/bin/cargo-fuzz
if [[ "$("$cargo_fuzz" --version 2>/dev/null)" != *"$CARGO_FUZZ_VERSION"* ]]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $CACHE/cargo-fuzz"
  cargo install -q --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$CACHE/cargo-fuzz"
fi
profile=(--dev)
[ "${FUZZ_RELEASE:-0}" = 1 ] && profile=(-O)
opts=(--fuzz-dir fuzz "${profile[@]}" --debug-assertions --sanitizer none --features libfuzzer)
export RUSTC_BOOTSTRAP=1 PATH="$CACHE/cargo-fuzz/bin:$PATH"
cargo fuzz build "${opts[@]}" >/dev/null 2>"$CACHE/fuzz-build.log" \
  || { tail -40 "$CACHE/fuzz-build.log"; echo "fuzz build failed (log: $CACHE/fuzz-build.log)"; exit 1; }

failed=()
for t in "${TARGETS[@]}"; do
  corpus=$FUZZ_CORPUS/$t
  mkdir -p "$corpus/corpus" "$corpus/artifacts"
  log=$corpus/last-run.log
  # -max_len: 64 KiB covers every seed and reaches the tight limits; the default limits are
  # exercised by the seeds and the services' tests with larger documents.
  if cargo fuzz run "${opts[@]}" "$t" "$corpus/corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="$corpus/artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    rate=$(grep -m1 '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
    units=$(find "$corpus/corpus" -type f | wc -l)
    printf 'fuzz %-14s %3ss  %10s execs  %8s execs/s  corpus %5s  0 crashes\n' "$t" "$SECONDS_PER_TARGET" "$execs" "$rate" "$units"
  else
    echo "fuzz $t FAILED: $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || true)"
    tail -30 "$log"
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz targets with crashes: ${failed[*]} (inputs in $FUZZ_CORPUS/<target>/artifacts/)"; exit 1; }
