#!/usr/bin/env bash
# Builds what the CRI tests need, outside the testbed (cargo cannot write there): the husk-cri
# client (host target) and the static pause binary of the sandbox image (musl, without the
# client's dependencies). The crate is no workspace member, so its unit tests (the CRI log
# parser, the /proc readers) run here too.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=${CARGO_TARGET_DIR:-$repo/target}/cri
m=$repo/tests/cri/Cargo.toml
CARGO_TARGET_DIR=$t cargo build --release --locked --manifest-path "$m" --bin husk-cri
CARGO_TARGET_DIR=$t cargo build --release --locked --manifest-path "$m" --bin pause --no-default-features --target x86_64-unknown-linux-musl
CARGO_TARGET_DIR=$t cargo test --release --locked --manifest-path "$m" --quiet
