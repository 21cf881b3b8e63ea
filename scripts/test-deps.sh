#!/usr/bin/env bash
# What the build and the tests need beyond the Rust toolchain, installed when missing (used by
# README's test command and by .ci/run):
#   cmake          Pingora's zlib-ng
#   slowhttptest   the abuse suite's slowloris and slow-body clients (tests/abuse.rs)
#   chromium       the dashboard in a real headless browser (tests/dashboard.rs)
#   prometheus     its promtool checks and unit-tests the alerting rules (tests/monitoring.rs)
#   dnsmasq-base   the DNS server whose answers the discovery tests change (tests/discovery.rs);
#                  the binary without the system service the dnsmasq package would start
#   redis-server   with redis-cli: the shared limits store and a Redis Cluster (tests/limits_store.rs)
#   haproxy        the L4 balancer of the scale-out example (tests/limits_store.rs)
#   systemd        systemd-analyze for scripts/check-systemd.sh (verify + security of the units)
#   .venv          the official MCP and OpenAI Python SDKs for the interop tests
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v slowhttptest >/dev/null || missing+=(slowhttptest)
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import mcp, openai" 2>/dev/null; then
  echo "installing the MCP and OpenAI Python SDKs into .venv"
  python3 -m venv .venv && .venv/bin/pip install -q mcp==2.3.0 openai==3.54.0
fi
