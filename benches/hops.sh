#!/usr/bin/env bash
# Where each proxy's share of the time to first token goes: N requests of the TTFT workload (1
# connection, sim ttft 20 ms, itl 5 ms) through every proxy while `perf record` takes the syscall
# tracepoints of its epoll_wait, recvfrom, sendto and writev; the medians of the request hop (client's
# request read -> written upstream) and of the chunk hop (wake-up -> chunk read -> written to the
# client). See benches/load/hops.rs and docs/benchmarks.md ("Latency added by the proxy").
#   benches/hops.sh [N]                      N requests per proxy (default 200)
#   MCAS_BENCH_TARGETS=gateway,bare,nginx benches/hops.sh
# Needs perf (apt-get install -y linux-perf) and root (or kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
export MCAS_BENCH_HOPS="${1:-200}"
exec cargo bench --bench load
