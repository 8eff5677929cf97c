#!/bin/sh
# Benchmark of husk-rootfs image building against cp -a and plain mkfs.ext4 -d, in one run.
# Usage: tests/rootfs/bench.sh [--work DIR] [--sizes-mib 5,200]   (needs root: overlay mount)
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p husk-rootfs --bin husk-rootfs-bench
exec "$CARGO_TARGET_DIR/release/husk-rootfs-bench" "$@"
