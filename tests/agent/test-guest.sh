#!/usr/bin/env bash
# husk-agent as PID 1 of a husk-vmm microVM: the test client (guest-agent/tests/guest.rs)
# creates containers from a read-only ext4 disk found by serial, checks output, cgroup limits,
# exec, an OOM kill event, then asks the agent to shut down; husk-vmm must exit 0 (powered off).
# Needs tests/agent/build.sh first (outside the testbed).
set -uo pipefail
. "$(dirname "$0")/../vmm/lib.sh"
t=${CARGO_TARGET_DIR:-$repo/target}
initrd=$t/agent-test/initramfs.cpio.gz
client=$(cat "$t/agent-test/guest-test.path" 2>/dev/null)
[ -f "$initrd" ] && [ -x "$client" ] || { echo "run tests/agent/build.sh first"; exit 1; }
vmm_pid=""
trap '[ -n "$vmm_pid" ] && kill -KILL "$vmm_pid" 2>/dev/null; rm -rf "$work"' EXIT

# Container rootfs: busybox-static on ext4.
root=$work/rootfs
mkdir -p "$root"/{bin,proc,dev,tmp,etc}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
mkfs.ext4 -q -F -d "$root" "$work/rootfs.img" 32M || { bad "mkfs.ext4"; finish; exit 1; }

uds=$work/v.sock
"$VMM" --kernel "$KDIR/vmlinux" --initrd "$initrd" --vcpus 1 --memory 256M \
  --cmdline "$CMDLINE" --disk "path=$work/rootfs.img,id=rootfs,ro" --vsock "cid=3,uds=$uds" \
  >"$work/console.out" 2>"$work/vmm.err" &
vmm_pid=$!
for _ in $(seq 300); do [ -S "$uds" ] && break; sleep 0.1; done

if HUSK_AGENT_UDS=$uds timeout 600 "$client" --ignored --nocapture --test-threads=1; then
  ok "agent API in the guest: containers, limits, exec, OOM event, shutdown"
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
