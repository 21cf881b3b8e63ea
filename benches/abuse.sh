#!/usr/bin/env bash
# Longer runs of the abuse suite (tests/abuse.rs, tests/abuse/): the same tests with longer measuring windows
# and the full attack rates, each printing one FIGURES line; the table it ends with is what
# docs/abuse.md records. Loopback only; every run is bounded in time (`timeout`) and in count.
#
#   benches/abuse.sh [SECONDS]        measuring window per phase, 2..300 (default 20)
#
# Environment (defaults are the issue's figures):
#   MCAS_ABUSE_CONNS           idle connections from one address (10000; needs `ulimit -Hn` above it)
#   MCAS_ABUSE_SLOW_CONNS      slowloris, slow-body and slow-upload connections, each (1000)
#   MCAS_ABUSE_WRONG_KEY_RATE  wrong keys a second from each of 1,000 addresses (10: 10,000/s)
#   MCAS_ABUSE_PROFILE         `debug` (default) or `release`
# Needs slowhttptest (Debian package `slowhttptest`).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
case $secs in '' | *[!0-9]*) echo "SECONDS must be a whole number" >&2; exit 2 ;; esac
if ((secs < 2 || secs > 300)); then echo "SECONDS must be within 2..300" >&2; exit 2; fi
export MCAS_ABUSE_SECS=$secs
export MCAS_ABUSE_CONNS=${MCAS_ABUSE_CONNS:-10000}
export MCAS_ABUSE_SLOW_CONNS=${MCAS_ABUSE_SLOW_CONNS:-1000}
export MCAS_ABUSE_WRONG_KEY_RATE=${MCAS_ABUSE_WRONG_KEY_RATE:-10}
for n in "$MCAS_ABUSE_CONNS" "$MCAS_ABUSE_SLOW_CONNS" "$MCAS_ABUSE_WRONG_KEY_RATE"; do
  case $n in '' | *[!0-9]*) echo "MCAS_ABUSE_* must be whole numbers" >&2; exit 2 ;; esac
done
if ((MCAS_ABUSE_CONNS > 15000 || MCAS_ABUSE_SLOW_CONNS > 5000 || MCAS_ABUSE_WRONG_KEY_RATE > 50)); then
  echo "refusing: at most 15000 idle connections, 5000 slow connections, 50 wrong keys/s per address" >&2
  exit 2
fi
profile=()
case ${MCAS_ABUSE_PROFILE:-debug} in
  debug) ;;
  release) profile=(--release) ;;
  *) echo "MCAS_ABUSE_PROFILE is debug or release" >&2; exit 2 ;;
esac
command -v slowhttptest >/dev/null || { echo "slowhttptest is not installed (apt-get install slowhttptest)" >&2; exit 2; }

cargo build -q "${profile[@]}" --bins
cargo test -q "${profile[@]}" --test it --no-run 2>/dev/null

tests=(
  framing::smuggling_shapes_get_400_and_nothing_ambiguous_goes_upstream
  framing::oversized_and_too_many_headers_get_431
  connections::ten_thousand_idle_connections_from_one_address_meet_the_per_ip_cap
  slow::slowloris_and_slow_body_clients_leave_normal_clients_their_latency
  flood::wrong_keys_from_a_thousand_addresses_leave_a_good_key_its_throughput
)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rows=()
for t in "${tests[@]}"; do
  echo "== $t" >&2
  if timeout $((secs * 4 + 180)) cargo test -q "${profile[@]}" --test it "abuse::$t" -- --exact --nocapture \
    --test-threads 1 >"$log" 2>&1; then
    result=held
  else
    result=FAILED
  fi
  figures=$( (grep -o 'FIGURES .*' "$log" || true) | sed 's/^FIGURES //' | tr '\n' ' ')
  rows+=("| \`$t\` | $result | ${figures:--} |")
  [ "$result" = held ] || grep -m3 -A3 'panicked' "$log" >&2 || true
done

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), ${MCAS_ABUSE_PROFILE:-debug} build, $(nproc) cores, window ${secs}s, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| test | assertion | figures |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
