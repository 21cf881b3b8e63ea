#!/usr/bin/env bash
# Instructions per request of the gateway and of the bare Pingora reference, under callgrind: the
# proxies run under `valgrind --tool=callgrind --instr-atstart=no`, each workload warms them up,
# then N requests go through with instrumentation on (callgrind_control), and the proxy's Ir ÷
# requests is printed with its ratio to bare's. Instruction counts do not move with the load on
# the machine (CPU time does), so this is the figure to steer by; docs/benchmarks.md has the runs.
# Same client, configs and selection as the load benchmark (benches/load.rs):
#   benches/callgrind.sh [N[,N,N]]   requests for non-streamed, streamed, streamed-256 (default 2000,500,100)
#   MCAS_BENCH_TARGETS=gateway MCAS_BENCH_WORKLOADS=non-streamed benches/callgrind.sh 1000
# Dumps stay in target/callgrind (MCAS_BENCH_CALLGRIND_OUT): callgrind_annotate --inclusive=yes FILE.
# Needs valgrind (apt-get install -y valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
export MCAS_BENCH_CALLGRIND="${1:-2000,500,100}"
export MCAS_BENCH_TARGETS="${MCAS_BENCH_TARGETS:-gateway,bare}"
export MCAS_BENCH_WORKLOADS="${MCAS_BENCH_WORKLOADS:-non-streamed,streamed,streamed-256}"
exec cargo bench --bench load
