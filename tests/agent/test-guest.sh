#!/usr/bin/env bash
# husk-agent as PID 1 of a husk-vmm microVM: the test client (guest-agent/tests/guest.rs)
# creates containers from a read-only ext4 disk found by serial, checks output, cgroup limits,
# exec, an OOM kill event, SyncAfterRestore (the wall clock `date` shows in a container moves
# to the time given, forward and back), that a container process cannot reach the agent over
# vsock (CIDs 1, 2, 3 and the guest's, with and without a vsock grant), then asks the agent to
# shut down; husk-vmm must exit 0 (powered off). Needs tests/agent/build.sh first (outside the
# testbed).
set -uo pipefail
. "$(dirname "$0")/../vmm/lib.sh"
t=${CARGO_TARGET_DIR:-$repo/target}
initrd=$t/agent-test/initramfs.cpio.gz
client=$(cat "$t/agent-test/guest-test.path" 2>/dev/null)
vsock_tool=$t/vsock-tool/x86_64-unknown-linux-musl/release/husk-vsock-tool
[ -f "$initrd" ] && [ -x "$client" ] && [ -x "$vsock_tool" ] || { echo "run tests/agent/build.sh first"; exit 1; }
# Not 3: the probe from a container tries CID 3 and the guest's own CID apart.
guest_cid=7
vmm_pid=""
trap '[ -n "$vmm_pid" ] && kill -KILL "$vmm_pid" 2>/dev/null; rm -rf "$work"' EXIT

# Container rootfs: busybox-static on ext4.
root=$work/rootfs
mkdir -p "$root"/{bin,proc,dev,tmp,etc}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
cp "$vsock_tool" "$root/bin/vsock-tool"
mkfs.ext4 -q -F -d "$root" "$work/rootfs.img" 32M || { bad "mkfs.ext4"; finish; exit 1; }

uds=$work/v.sock
"$VMM" --kernel "$KDIR/vmlinux" --initrd "$initrd" --vcpus 1 --memory 256M \
  --cmdline "$CMDLINE" --disk "path=$work/rootfs.img,id=rootfs,ro" --vsock "cid=$guest_cid,uds=$uds" \
  >"$work/console.out" 2>"$work/vmm.err" &
vmm_pid=$!
for _ in $(seq 300); do [ -S "$uds" ] && break; sleep 0.1; done

if HUSK_AGENT_UDS=$uds HUSK_GUEST_CID=$guest_cid timeout 600 "$client" --ignored --nocapture --test-threads=1; then
  ok "agent API in the guest: containers, limits, exec, OOM event, clock and entropy after restore, no vsock from containers, shutdown"
else
  bad "in-guest client failed"
fi
rc=124
for _ in $(seq 600); do
  if ! kill -0 "$vmm_pid" 2>/dev/null; then rc=0; wait "$vmm_pid" || rc=$?; vmm_pid=""; break; fi
  sleep 0.1
done
if [ "$rc" = 0 ]; then ok "Shutdown powered the VM off (husk-vmm exit 0)"
else bad "husk-vmm exit $rc after Shutdown: $(tail -3 "$work/vmm.err")"; fi
grep -a "husk-agent" "$work/console.out" | head -20
if grep -aq "ready on vsock://-1:1024" "$work/console.out"; then ok "agent logged readiness on the serial console"
else bad "no readiness line on the console"; tail -30 "$work/console.out"; fi
finish
