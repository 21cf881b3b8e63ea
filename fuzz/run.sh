#!/usr/bin/env bash
# Runs every fuzz target `cargo fuzz list` names for SECONDS each (default 20), one after the
# other; exits non-zero as soon as one finds a crash (its reproducer is in
# fuzz/artifacts/<target>/). The stable toolchain builds it with RUSTC_BOOTSTRAP=1: see
# docs/fuzzing.md.
#
#   fuzz/run.sh [SECONDS]
#
# Seeds: fuzz/corpus/<target>/ (kept in git, read only); what the fuzzer finds goes to
# fuzz/corpus-gen/<target>/ (ignored by git), reused by the next run.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
export RUSTC_BOOTSTRAP=1
# The instrumented build of every dependency is the slow part (docs/fuzzing.md): keep it in a
# cache outside the checkout, like cargo's own registry, so a fresh clone on the same machine
# rebuilds only the gateway crate. MCAS_FUZZ_TARGET_DIR moves it.
tdir="${MCAS_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mcas-gateway/fuzz-target}"
mkdir -p "$tdir" target
cargo fuzz build --target-dir "$tdir"
for target in $(cargo fuzz list); do
  mkdir -p "corpus-gen/$target" "corpus/$target"
  echo "fuzz: $target for ${secs}s"
  log="target/run-$target.log"
  if ! cargo fuzz run --target-dir "$tdir" "$target" "corpus-gen/$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target crashed; the reproducer is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done ' "$log" || true
done
