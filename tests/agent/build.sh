#!/usr/bin/env bash
# Builds what tests/agent/test-guest.sh needs, outside the testbed (cargo cannot write there):
# the static husk-agent, the initramfs made from it by husk-rootfs, and the in-guest test client
# (guest-agent/tests/guest.rs), whose path goes to $t/agent-test/guest-test.path, and the static
# vsock-tool (tests/virtio/vsock-tool) that probes vsock from a container; for test-peer.sh the
# client guest-agent/tests/peer.rs and the outer VM's vsock_loopback module. husk-vmm comes
# from `make build` (tests/vmm/lib.sh finds it; HUSK_VMM overrides).
# HUSK_ROOTFS: a husk-rootfs binary to use (default $t/release/husk-rootfs, built if missing).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=${CARGO_TARGET_DIR:-$repo/target}
cd "$repo"
CARGO_TARGET_DIR=$t cargo build --profile agent -p husk-agent --target x86_64-unknown-linux-musl
CARGO_TARGET_DIR=$t/vsock-tool cargo build --release --target x86_64-unknown-linux-musl \
  --manifest-path "$repo/tests/virtio/vsock-tool/Cargo.toml"
rootfs_bin=${HUSK_ROOTFS:-$t/release/husk-rootfs}
[ -x "$rootfs_bin" ] || CARGO_TARGET_DIR=$t cargo build --release -p husk-rootfs
mkdir -p "$t/agent-test"
"$rootfs_bin" initramfs --agent "$t/x86_64-unknown-linux-musl/agent/husk-agent" \
  -o "$t/agent-test/initramfs.cpio.gz"
CARGO_TARGET_DIR=$t cargo test -p husk-agent --test guest --test peer --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("guest", "peer"):
        open(sys.argv[1] + "/" + m["target"]["name"] + "-test.path", "w").write(m["executable"] + "\n")' "$t/agent-test"
# test-peer.sh loads the outer VM's vsock loopback transport: /root/.cache is not visible in
# there, so the module of the testbed's outer kernel comes along (when the testbed has one).
ko=$(find "${HUSK_CACHE:-$HOME/.cache/husk}/outer-kernel/root/lib/modules" -name 'vsock_loopback.ko*' 2>/dev/null | head -n1 || true)
case "$ko" in
  *.ko.xz) xz -dc "$ko" >"$t/agent-test/vsock_loopback.ko" ;;
  *.ko.zst) zstd -qdc "$ko" >"$t/agent-test/vsock_loopback.ko" ;;
  *.ko) cp "$ko" "$t/agent-test/vsock_loopback.ko" ;;
esac
echo "agent test client: $(cat "$t/agent-test/guest-test.path")"
