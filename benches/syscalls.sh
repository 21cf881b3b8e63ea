#!/usr/bin/env bash
# System calls per request of each proxy: `strace -c -f -p PID` attached to the serving process
# while a fixed number of requests goes through it (after every connection is warm), then the
# calls of each system call divided by the requests. Same targets and workloads as the load
# benchmark (benches/load.rs, docs/benchmarks.md), selectable the same way:
#   benches/syscalls.sh [N]          N requests per target and workload (default 2000)
#   MCAS_BENCH_TARGETS=bare,bare-0.9.1,gateway MCAS_BENCH_WORKLOADS=non-streamed benches/syscalls.sh
# Needs strace (apt-get install -y strace). Connections: MCAS_BENCH_CONNS (default here 8).
set -euo pipefail
cd "$(dirname "$0")/.."
export MCAS_BENCH_SYSCALLS="${1:-2000}"
export MCAS_BENCH_CONNS="${MCAS_BENCH_CONNS:-8}"
exec cargo bench --bench load
