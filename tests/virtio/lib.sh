# Shared helpers of the virtio testbed tests (sourced). Builds on tests/vmm/lib.sh (husk-vmm
# binary, kernel, $work, ok/bad/finish).
. "$(dirname "${BASH_SOURCE[0]}")/../vmm/lib.sh"
vdir=$repo/tests/virtio
# The guest-side vsock tool (static musl); built by tests/virtio/build.sh before the testbed.
VSOCK_TOOL=${HUSK_VSOCK_TOOL:-${CARGO_TARGET_DIR:-$repo/target}/vsock-tool/x86_64-unknown-linux-musl/release/husk-vsock-tool}
# host_python: the python3 interpreter's own path, for scripts that time or profile
# transfers: through a version manager's shim every start costs seconds of the testbed's one
# vCPU (pyenv's bash and helpers were ~60% of a profile's samples).
host_python() { python3 -c 'import sys; print(sys.executable)'; }
vmm_pid=""
cleanup_vmm() {
  if [ -n "$vmm_pid" ] && kill -0 "$vmm_pid" 2>/dev/null; then kill -KILL "$vmm_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup_vmm EXIT
# mkinit_x NAME SCRIPT_BODY [SRC:DEST]...: like mkinit, with extra files.
mkinit_x() {
  local name=$1 body=$2
  shift 2
  printf '#!/bin/sh\n%s\n' "$body" >"$work/$name.sh"
  chmod 755 "$work/$name.sh"
  "$repo/tests/testbed/mkinitramfs.sh" "$work/$name.cpio.gz" "$work/$name.sh" "$@"
}
# mkinit_vsock_peer NAME: an initramfs whose guest serves `vsock-tool sink` on port 5000 and
# `spout` on 5001 until something connects to 5099, then reboots (bench-irq, profile-vsock).
mkinit_vsock_peer() {
  mkinit_x "$1" "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
vsock-tool sink 5000 >/dev/null &
vsock-tool spout 5001 >/dev/null &
vsock-tool wait 5099
reboot -f" "$VSOCK_TOOL:/bin/vsock-tool"
}
# rates LOG: the MiB/s of each complete vsock_host.py blast/pull in LOG, one per line (an
# incomplete transfer prints none). median: the median of numbers on stdin (nearest rank,
# the lower one of an even count), nothing for none.
rates() { sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END { if (NR) print a[int((NR+1)/2)] }'; }
# start_vm NAME INITRD [husk-vmm args]: runs the VM in the background ($vmm_pid).
start_vm() {
  local name=$1 initrd=$2
  shift 2
  "$VMM" --kernel "$KDIR/vmlinux" --initrd "$initrd" --vcpus 1 --memory 256M \
    --cmdline "$CMDLINE" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  vmm_pid=$!
}
# wait_vm SECS: waits for the VM to exit; sets $rc (124 and kills it on timeout).
wait_vm() {
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    if ! kill -0 "$vmm_pid" 2>/dev/null; then
      rc=0; wait "$vmm_pid" || rc=$?; vmm_pid=""; return
    fi
    sleep 0.1
  done
  kill -KILL "$vmm_pid" 2>/dev/null; wait "$vmm_pid" 2>/dev/null; vmm_pid=""; rc=124
}
