#!/bin/sh
# bench-where: host
# Benchmark of husk-rootfs image building against cp -a and plain mkfs.ext4 -d, in one run:
# a ~5 MiB and a ~200 MiB tree, cold and cached. Needs no KVM; needs ~700 MiB free in $TMPDIR.
# Usage: tests/rootfs/bench.sh [--work DIR] [--sizes-mib 5,200]
# Uses target/release/husk-rootfs-bench (built by `make build`); builds it when the target
# directory is writable (not inside the read-only testbed).
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$CARGO_TARGET_DIR/release/husk-rootfs-bench"
if [ -w "$CARGO_TARGET_DIR" ] || [ ! -e "$CARGO_TARGET_DIR" ] && [ -w "$PWD" ]; then
    cargo build --release -q -p husk-rootfs --bin husk-rootfs-bench
fi
[ -x "$BIN" ] || { echo "bench: $BIN missing (run make build)" >&2; exit 1; }
exec "$BIN" "$@"
