#!/usr/bin/env bash
# Builds what tests/agent/test-guest.sh needs, outside the testbed (cargo cannot write there):
# the static husk-agent, the initramfs made from it by husk-rootfs, and the in-guest test client
# (guest-agent/tests/guest.rs), whose path goes to $t/agent-test/guest-test.path. husk-vmm comes
# from `make build` (tests/vmm/lib.sh finds it; HUSK_VMM overrides).
# HUSK_ROOTFS: a husk-rootfs binary to use (default $t/release/husk-rootfs, built if missing).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=${CARGO_TARGET_DIR:-$repo/target}
cd "$repo"
CARGO_TARGET_DIR=$t cargo build --release -p husk-agent --target x86_64-unknown-linux-musl
rootfs_bin=${HUSK_ROOTFS:-$t/release/husk-rootfs}
[ -x "$rootfs_bin" ] || CARGO_TARGET_DIR=$t cargo build --release -p husk-rootfs
mkdir -p "$t/agent-test"
"$rootfs_bin" initramfs --agent "$t/x86_64-unknown-linux-musl/release/husk-agent" \
  -o "$t/agent-test/initramfs.cpio.gz"
CARGO_TARGET_DIR=$t cargo test -p husk-agent --test guest --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "guest":
        print(m["executable"])' >"$t/agent-test/guest-test.path"
echo "agent test client: $(cat "$t/agent-test/guest-test.path")"
