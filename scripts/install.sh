#!/usr/bin/env bash
# Installs the gateway (and the Telegram runner when built) for systemd:
#   $PREFIX/bin/mcas-gateway, mcas-telegram             binaries (0755)
#   $UNITDIR/mcas-gateway.service, mcas-telegram.service  units (0644; also mcas-gateway@.service
#                                                       when present)
#   $SYSCONFDIR/mcas/gateway.yaml                       config (0644; kept if present)
#   $SYSCONFDIR/mcas/gateway.env                        secrets (0600; created empty with
#                                                       commented names if absent, mode enforced)
#   $PREFIX/share/doc/mcas/operations.md                what the unit's Documentation= names
# Everything goes under $DESTDIR when set (staging, packaging, tests); then nothing outside it is
# touched and systemctl is not called.
#
#   cargo build --release && sudo scripts/install.sh
#
# Variables: DESTDIR (default empty), PREFIX (/usr/local), SYSCONFDIR (/etc),
# UNITDIR (/etc/systemd/system), BIN_DIR (where the built binaries are: target/release),
# CONFIG (the config to install when none is there: conf/gateway.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
BIN_DIR="${BIN_DIR:-target/release}"
CONFIG="${CONFIG:-conf/gateway.yaml}"

if [ ! -x "$BIN_DIR/mcas-gateway" ]; then
  echo "no $BIN_DIR/mcas-gateway: run \`cargo build --release\` first (or set BIN_DIR)" >&2
  exit 1
fi

root="$DESTDIR"
bindir="$PREFIX/bin"
etc="$SYSCONFDIR/mcas"
umask 022

install -d -m 0755 "$root$bindir" "$root$UNITDIR" "$root$etc" "$root$PREFIX/share/doc/mcas"
for bin in mcas-gateway mcas-telegram; do
  if [ -x "$BIN_DIR/$bin" ]; then
    install -m 0755 "$BIN_DIR/$bin" "$root$bindir/$bin"
    echo "installed $root$bindir/$bin"
  fi
done

# The units name /usr/local/bin and /etc/mcas; another PREFIX or SYSCONFDIR is written into them.
for unit in systemd/*.service; do
  sed -e "s#/usr/local/bin/#$bindir/#g" -e "s#/etc/mcas/#$etc/#g" \
      -e "s#/usr/local/share/doc/mcas/#$PREFIX/share/doc/mcas/#g" "$unit" > "$root$UNITDIR/$(basename "$unit").tmp"
  chmod 0644 "$root$UNITDIR/$(basename "$unit").tmp"
  mv "$root$UNITDIR/$(basename "$unit").tmp" "$root$UNITDIR/$(basename "$unit")"
  echo "installed $root$UNITDIR/$(basename "$unit")"
done
install -m 0644 docs/operations.md "$root$PREFIX/share/doc/mcas/operations.md"

if [ -e "$root$etc/gateway.yaml" ]; then
  echo "kept $root$etc/gateway.yaml (check it: $bindir/mcas-gateway --config $etc/gateway.yaml --check)"
else
  install -m 0644 "$CONFIG" "$root$etc/gateway.yaml"
  echo "installed $root$etc/gateway.yaml (from $CONFIG)"
fi

# Secrets: read by systemd (as root) before the switch to the service's dynamic user, so only
# root needs to read them. Created with its mode before anything is written into it.
env_file="$root$etc/gateway.env"
if [ ! -e "$env_file" ]; then
  install -m 0600 /dev/null "$env_file"
  cat >> "$env_file" <<'ENV'
# Secrets of mcas-gateway (KEY=value, one a line), referenced from gateway.yaml as ${NAME}.
# ALICE_KEY=
# MCAS_VLLM_URL=http://127.0.0.1:8000/v1
# MCAS_VLLM_KEY=
# MCAS_ADMIN_TOKEN=
# MCAS_MCP_SESSION_KEY=
ENV
  echo "created $env_file (0600): put the secrets there"
fi
chmod 0600 "$env_file"
if [ "$(id -u)" = 0 ] && [ -z "$DESTDIR" ]; then
  chown root:root "$env_file"
fi

if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "next: edit $etc/gateway.yaml and $etc/gateway.env, then: systemctl enable --now mcas-gateway"
fi
