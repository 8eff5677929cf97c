#!/usr/bin/env bash
# Snapshots of a VM with the virtio devices a pod's template needs: vsock, empty disk slots
# and the free page reporting balloon (tests/vmm/test-snapshot.sh covers the VM without them).
#  1. The guest serves `vsock-tool serve 5000` and prints each second the size of its first
#     slot. The host sends 1 MiB over vsock and gets the checked reply, then (connection
#     closed) pauses and snapshots the VM, and kills it.
#  2. The snapshot is restored with a new vsock socket: 4 MiB sent over vsock come back with
#     the right CRC (the restored queues and the guest's vsock driver work on), an ext4 image
#     attached to slot0 through the API shows its size in the guest (the restored block
#     device's config interrupt and requests), the balloon's counters are served.
#  3. A host connection left open refuses the snapshot (409 naming vsock's connections) and
#     the VM resumes; --restore with another vsock CID is refused naming the CID.
#  4. Nothing is left: no husk-vmm of this test, no socket.
set -uo pipefail
# shellcheck source=tests/vmm/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/vmm/snapshot-lib.sh
. "$(dirname "$0")/snapshot-lib.sh"
VSOCK_TOOL=${HUSK_VSOCK_TOOL:-${CARGO_TARGET_DIR:-$repo/target}/vsock-tool/x86_64-unknown-linux-musl/release/husk-vsock-tool}
HOST=$repo/tests/virtio/vsock_host.py
[ -x "$VSOCK_TOOL" ] || { echo "test-snapshot-devices: no $VSOCK_TOOL (tests/virtio/build.sh)" >&2; exit 1; }
for t in mkfs.ext4 curl python3; do command -v "$t" >/dev/null || { echo "test-snapshot-devices: $t missing (make deps)" >&2; exit 1; }; done
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

printf '#!/bin/sh\n%s\n' 'mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
vsock-tool serve 5000 >/dev/null &
echo READY
n=0
while :; do n=$((n + 1)); echo "TICK $n SIZE $(cat /sys/block/vda/size)"; sleep 1; done' >"$work/init.sh"
chmod 755 "$work/init.sh"
"$repo/tests/testbed/mkinitramfs.sh" "$work/guest.cpio.gz" "$work/init.sh" "$VSOCK_TOOL:/bin/vsock-tool" || exit 1
mkdir -p "$work/img.d" && echo hello >"$work/img.d/hello.txt"
mkfs.ext4 -q -F -d "$work/img.d" "$work/img.ext4" 8M >/dev/null 2>&1 || { echo "mkfs.ext4 failed" >&2; exit 1; }

# wait_for NAME REGEX SECS: until NAME's console has a line matching REGEX.
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -aqE "$2" "$work/$1.log" 2>/dev/null && return 0
    sleep 0.1
  done
  bad "$1: no console line matching '$2' within $3 s (last: $(tail -c 300 "$work/$1.log" 2>/dev/null | tr '\n' '|'))"
  finish
}

# 1. Boot, use vsock, snapshot.
vm o --kernel "$KDIR/vmlinux" --initrd "$work/guest.cpio.gz" --vcpus 1 --memory 128M --cmdline "$CMDLINE" \
  --vsock "cid=3,uds=$work/o.vsock" --disk-slots 2 --free-page-reporting
wait_for o '^READY' 180
wait_for o '^TICK 2 ' 60
out=$(python3 "$HOST" send "$work/o.vsock" 5000 1048576 2>&1) && ok "vsock before the snapshot: $out" || bad "vsock before the snapshot: $out"
sleep 1
call o PUT /vm/pause
[ "$code" = 200 ] || bad "pause: $code $body"
mkdir "$work/snap"
call o PUT /vm/snapshot "{\"dir\":\"$work/snap\"}"
[ "$code" = 200 ] && ok "snapshot with vsock, 2 empty slots and the balloon: $body" || { bad "snapshot: $code $body"; finish; }
kill_vm o

# 2. Restore: vsock, a slot attach and the balloon work on.
vm r --restore "$work/snap" --vsock "cid=3,uds=$work/r.vsock"
wait_for r '^TICK [0-9]+ SIZE 0' 120
grep -aq '^READY' "$work/r.log" && bad "r booted again (READY on its console)" || ok "r continues without a boot"
out=$(python3 "$HOST" send "$work/r.vsock" 5000 4194304 2>&1) && ok "vsock after the restore: $out" || bad "vsock after the restore: $out"
call r PUT /vm/disks/slot0 "{\"path\":\"$work/img.ext4\",\"id\":\"img\"}"
[ "$code" = 200 ] && ok "slot0 attached on the restored VM" || bad "attach on the restored VM: $code $body"
wait_for r '^TICK [0-9]+ SIZE 16384' 60
ok "the restored guest sees the attached image's 16384 sectors"
call r GET /vm/counters
grep -q '"balloon"' <<<"$body" && grep -q '"vsock"' <<<"$body" && ok "counters of the restored devices served" || bad "counters: $code $body"

# 3. An attached image, then an open host connection, refuse the snapshot; the VM goes on.
call r PUT /vm/pause
mkdir "$work/snap1"
call r PUT /vm/snapshot "{\"dir\":\"$work/snap1\"}"
if [ "$code" = 409 ] && grep -q 'slot0 has' <<<"$body" && [ -z "$(ls -A "$work/snap1")" ]; then ok "an attached slot refuses the snapshot: $body"
else bad "snapshot with slot0 attached: want 409 naming it, nothing written; got $code $body"; fi
call r PUT /vm/resume
call r DELETE /vm/disks/slot0
[ "$code" = 200 ] || bad "detach of slot0: $code $body"
n=$(grep -a '^TICK' "$work/r.log" | tail -1 | awk '{print $2}')
wait_for r "^TICK $((n + 2)) SIZE 0" 60
python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'CONNECT 5000\n')
print(s.recv(64).decode().strip(), flush=True); time.sleep(60)" "$work/r.vsock" >"$work/hold.out" 2>&1 &
holder=$!
pids+=("$holder")
for ((i = 0; i < 100; i++)); do grep -q '^OK' "$work/hold.out" && break; sleep 0.1; done
call r PUT /vm/pause
mkdir "$work/snap2"
call r PUT /vm/snapshot "{\"dir\":\"$work/snap2\"}"
if [ "$code" = 409 ] && grep -q 'vsock has 1 connections' <<<"$body" && [ -z "$(ls -A "$work/snap2")" ]; then ok "open vsock connection refuses the snapshot: $body"
else bad "snapshot with a connection open: want 409 naming it, nothing written; got $code $body, dir: $(ls -A "$work/snap2")"; fi
kill "$holder" 2>/dev/null
call r PUT /vm/resume
n=$(grep -a '^TICK' "$work/r.log" | tail -1 | awk '{print $2}')
wait_for r "^TICK $((n + 2)) " 60
ok "r ticks on after the refusal"
kill_vm r
err=$("$VMM" --restore "$work/snap" --vsock "cid=7,uds=$work/x.vsock" --console none 2>&1)
[ $? -ne 0 ] && grep -q 'cid=7' <<<"$err" && grep -q 'CID 3' <<<"$err" && ok "restore with another vsock CID refused: $err" || bad "restore with cid=7: $err"

# 4. Nothing left.
[ -z "$(pgrep -f "husk-vmm.*$work/")" ] && ok "no husk-vmm of this test left" || bad "husk-vmm left: $(pgrep -af "husk-vmm.*$work/")"
left=$(find "$work" -type s)
[ -z "$left" ] && ok "no socket left" || bad "sockets left: $left"
finish
