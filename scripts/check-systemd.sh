#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` on every unit in systemd/ (templates as an
# instance), and `systemd-analyze security --offline=yes` on the gateway, whose exposure must
# stay at or below MAX_EXPOSURE (default 2.0). Run by .ci/run; needs Debian's `systemd`
# package (systemd-analyze), not a running systemd.
#
# verify insists that every ExecStart=/ExecReload= binary exists and is executable; the units
# name /usr/local/bin/…, which a CI machine does not have. So the units are checked as copies
# whose /usr/local/bin/ points into a temporary directory holding executable stand-ins; every
# other line is verified as written.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/units"
for unit in systemd/*.service; do
  name="$(basename "$unit")"
  # A template (name@.service) is verified as one instance of it.
  case "$name" in *@.service) name="${name%@.service}@ci.service" ;; esac
  sed "s#/usr/local/bin/#$tmp/bin/#g" "$unit" > "$tmp/units/$name"
  grep -oE "$tmp/bin/[A-Za-z0-9_.-]+" "$tmp/units/$name" | sort -u | while read -r bin; do
    printf '#!/bin/sh\nexit 0\n' > "$bin"
    chmod 0755 "$bin"
  done
done
echo "systemd-analyze verify: $(cd "$tmp/units" && echo *)"
out="$(cd "$tmp/units" && systemd-analyze verify ./*.service 2>&1)" || { echo "$out"; exit 1; }
# verify exits 0 on some warnings; treat anything it prints about our units as a failure.
if echo "$out" | grep -E "mcas-[a-z@.-]*service" ; then
  echo "systemd-analyze verify reported problems (above)"
  exit 1
fi

for unit in systemd/mcas-gateway.service systemd/mcas-telegram.service; do
  score="$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  echo "systemd-analyze security --offline=yes $unit: exposure $score"
  if [ "$unit" = systemd/mcas-gateway.service ] && ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s != "" && s + 0 <= m + 0) }'; then
    echo "the gateway's exposure ${score:-?} is above $MAX_EXPOSURE"
    exit 1
  fi
done
