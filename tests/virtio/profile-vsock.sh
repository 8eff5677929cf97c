#!/usr/bin/env bash
# Where the CPU goes in vsock transfers: husk-vmm against QEMU's vhost-vsock, in the testbed.
# perf samples the whole outer VM (cpu-clock, 2000 Hz) during one BYTES transfer per
# direction; prints samples per thread name (husk: vmm-events and vcpu-0; QEMU: vhost-<pid>
# and qemu-system-x86, its vCPU and main threads) and the top symbols of those threads. A
# diagnostic, not a test: compare sample counts (0.5 ms each), not percentages (python's
# start-up is in there too).
#   tests/virtio/build.sh && tests/testbed/run -- tests/virtio/profile-vsock.sh [MiB, default 256]
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${1:-256}
[[ "$MB" =~ ^[1-9][0-9]*$ ]] || { echo "profile-vsock: size must be a positive number of MiB, got '$MB'"; exit 2; }
command -v perf >/dev/null || { echo "profile-vsock: perf is not installed (linux-perf)"; exit 1; }
[ -x "$VSOCK_TOOL" ] || { echo "profile-vsock: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
BYTES=$((MB * 1048576))
PY=$(host_python) || { echo "profile-vsock: python3 does not run"; exit 1; }
mkinit_vsock_peer probe
qp=""
trap '[ -n "$qp" ] && kill -KILL "$qp" 2>/dev/null; cleanup_vmm' EXIT
prof() { # LABEL TARGET
  timeout 120 "$PY" "$vdir/vsock_host.py" blast "$2" 5000 "$BYTES" # warm-up
  perf record -q -e cpu-clock -F 2000 -a -o "$work/$1-h2g.data" -- timeout 120 "$PY" "$vdir/vsock_host.py" blast "$2" 5000 "$BYTES"
  perf record -q -e cpu-clock -F 2000 -a -o "$work/$1-g2h.data" -- timeout 120 "$PY" "$vdir/vsock_host.py" pull "$2" 5001 "$BYTES"
  timeout 60 "$PY" "$vdir/vsock_host.py" poke "$2" 5099 >/dev/null 2>&1
}
start_vm p "$work/probe.cpio.gz" --vsock "cid=3,uds=$work/v.sock"
prof husk "$work/v.sock"
wait_vm 60
qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC -m 256 -smp 1 \
  -nodefaults -no-user-config -nographic -serial "file:$work/q.out" -no-reboot \
  -kernel "$KDIR/bzImage" -initrd "$work/probe.cpio.gz" -append "$CMDLINE reboot=t" \
  -device vhost-vsock-device,guest-cid=3 </dev/null >/dev/null 2>&1 &
qp=$!
prof qemu vsock:3
for _ in $(seq 300); do kill -0 "$qp" 2>/dev/null || break; sleep 0.2; done
for f in "$work"/*.data; do
  echo "######## $(basename "$f" .data): samples per thread"
  perf report -i "$f" -n --no-children --sort comm -q --stdio -g none 2>/dev/null | grep . | head -12 || true
  echo "---- top symbols of the device threads"
  perf report -i "$f" -n --no-children --sort comm,dso,sym -q --stdio -g none \
    --comms "vmm-events,vcpu-0,vhost-$qp,qemu-system-x86" 2>/dev/null | head -30 || true
done
exit 0
