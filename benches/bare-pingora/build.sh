#!/usr/bin/env bash
# Builds the bare Pingora reference twice, from the same source: against Pingora 0.9.1 as
# published on crates.io ("unpatched") and against the patched tree in vendor/ ("patched"), the
# one the gateway builds with. Each build runs in a copy of this directory (so the committed
# Cargo.lock is never rewritten by the [patch] of the other); both share one target directory.
# Prints the binary paths. Usage: benches/bare-pingora/build.sh [patched|unpatched|both]
# To measure one step of the patch series: BARE_VENDOR=DIR (a copy of vendor/ at that step) and
# BARE_NAME=NAME build DIR's Pingora into bin/bare-pingora-NAME.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$repo/target}/bare-pingora"
which="${1:-both}"
mkdir -p "$out/bin"
build() {
    local variant="$1"; shift
    local src="$out/src-$variant"
    mkdir -p "$src/src"
    cp "$here/Cargo.toml" "$src/Cargo.toml"
    cp "$here/src/main.rs" "$src/src/main.rs"
    [ -f "$src/Cargo.lock" ] || cp "$here/Cargo.lock" "$src/Cargo.lock"
    # Both variants use the same allocator crate as the gateway (vendor/mimalloc, patched), so
    # that only Pingora differs between them and the allocator does not between them and the gateway.
    (cd "$src" && cargo build --release --quiet --target-dir "$out/build" \
        --config "patch.crates-io.mimalloc.path=\"$repo/vendor/mimalloc\"" "$@" >&2)
    cp "$out/build/release/bare-pingora" "$out/bin/bare-pingora-$variant"
    echo "$out/bin/bare-pingora-$variant"
}
if [ "$which" = unpatched ] || [ "$which" = both ]; then
    build unpatched
fi
if [ "$which" = patched ] || [ "$which" = both ]; then
    vendor="${BARE_VENDOR:-$repo/vendor}"
    build "${BARE_NAME:-patched}" \
        --config "patch.crates-io.pingora-core.path=\"$vendor/pingora-core\"" \
        --config "patch.crates-io.pingora-proxy.path=\"$vendor/pingora-proxy\"" \
        --config "patch.crates-io.pingora-http.path=\"$vendor/pingora-http\"" \
        --config "patch.crates-io.pingora-pool.path=\"$vendor/pingora-pool\"" \
        --config "patch.crates-io.pingora-timeout.path=\"$vendor/pingora-timeout\""
fi
