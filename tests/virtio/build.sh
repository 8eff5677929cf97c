#!/usr/bin/env bash
# Builds what the virtio testbed tests need, outside the testbed (cargo cannot write there):
# the guest vsock tool (static musl) and husk-vmm (release).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=${CARGO_TARGET_DIR:-$repo/target}
CARGO_TARGET_DIR=$t/vsock-tool cargo build --release --target x86_64-unknown-linux-musl \
  --manifest-path "$repo/tests/virtio/vsock-tool/Cargo.toml"
(cd "$repo" && CARGO_TARGET_DIR=$t cargo build --release -p husk-microvm)
