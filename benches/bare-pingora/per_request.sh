#!/usr/bin/env bash
# Per-request counts of one bare Pingora binary (build.sh), independent of machine load: user-space
# instructions (valgrind --tool=callgrind, Ir counted only while N requests go through, after 400
# of warm-up; Ir ÷ N) and system calls (strace -c -f over another N requests; calls ÷ N). Client:
# fixed_load.py, 8 keep-alive connections; upstream: mcas-sim (MCAS_SIM, default target/debug/mcas-sim).
# Usage: benches/bare-pingora/per_request.sh BIN [N (default 2000)] [stream]
# Needs valgrind and strace (apt-get install -y valgrind strace). Ir does not count the kernel:
# a system call saved shows in the strace line, not in Ir (docs/benchmarks.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1" n="${2:-2000}" mode="${3:-}"
sim="${MCAS_SIM:-$here/../../target/debug/mcas-sim}"
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 120); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.5; done; echo "no listener on $1" >&2; exit 1; }
load() { python3 "$here/fixed_load.py" "$1" "$2" 8 16 $mode >&2; }
up="$(port)"
"$sim" --listen "127.0.0.1:$up" >"$tmp/sim.log" 2>&1 & pids+=($!)
wait_port "$up"

# instructions
p="$(port)"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.out" \
    "$bin" "127.0.0.1:$p" "127.0.0.1:$up" >"$tmp/cg.log" 2>&1 & vg=$!; pids+=($vg)
wait_port "$p"
load "$p" 400
callgrind_control -i on "$vg" >/dev/null
load "$p" "$n"
callgrind_control -i off "$vg" >/dev/null
callgrind_control -d "$vg" >/dev/null
sleep 1
ir="$(cat "$tmp"/cg.out* | awk '/^totals:/ {s += $2} END {print s}')"

# system calls
p="$(port)"
"$bin" "127.0.0.1:$p" "127.0.0.1:$up" >"$tmp/bare.log" 2>&1 & bp=$!; pids+=($bp)
wait_port "$p"
load "$p" 400
strace -f -c -o "$tmp/strace.txt" -p "$bp" 2>/dev/null & st=$!
sleep 1
load "$p" "$n"
sleep 0.3
kill -INT "$st"; wait "$st" || true
calls="$(awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" && $4 / n >= 0.005 {printf "%s%s %.2f", sep, $NF, $4 / n; sep = ", "}' "$tmp/strace.txt")"
echo "$(basename "$bin") ${mode:-non-streamed}: Ir/request $((ir / n)) ($ir / $n); system calls/request: $calls"
