#!/usr/bin/env bash
# How husk-vmm raises virtio interrupts, measured: vsock throughput with --irq-delivery line
# (KVM_IRQ_LINE, the default) against --irq-delivery irqfd, with QEMU microvm's
# vhost-vsock-device as the peer, all in the same testbed run. Same guest kernel, RAM,
# 1 vCPU and initramfs for all three; only a vsock device, so nothing else shares the event
# loop. Each round boots the three VMs in turn (the order reverses every round: a VM's place
# in the round moves its figures by a few percent) and times BENCH_XFERS transfers of
# BENCH_MB each way (host -> guest `vsock-tool sink`, guest `vsock-tool spout` -> host)
# after one untimed warm-up transfer. Prints medians and ratios with a 90% bootstrap
# interval (ratio.py). Exits non-zero, naming them, if figures are missing.
#   tests/virtio/build.sh && tests/testbed/run -- tests/virtio/bench-irq.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${BENCH_MB:-32}
REPS=${BENCH_IRQ_REPS:-2}
XFERS=${BENCH_XFERS:-6}
for v in MB REPS XFERS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-irq: $v must be a positive integer, got '${!v}'"; exit 2; }
done
PY=$(host_python) || { echo "bench-irq: python3 does not run"; exit 1; }
[ -x "$VSOCK_TOOL" ] || { echo "bench-irq: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
[ -c /dev/vhost-vsock ] || echo "bench-irq: no /dev/vhost-vsock here: QEMU's figures will be missing"
BYTES=$((MB * 1048576))
qemu_pid=""
trap '[ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null; cleanup_vmm' EXIT
trap 'exit 130' INT TERM
mkinit_vsock_peer irq

# transfers NAME TARGET: the warm-up, then XFERS timed transfers each way; appends
# "hg RATE" / "gh RATE" lines to $work/NAME.figs; then lets the guest power off.
transfers() {
  local name=$1 target=$2 i
  timeout -k 5 300 "$PY" "$vdir/vsock_host.py" blast "$target" 5000 "$BYTES" >/dev/null 2>&1
  for i in $(seq "$XFERS"); do
    timeout -k 5 300 "$PY" "$vdir/vsock_host.py" blast "$target" 5000 "$BYTES" 2>&1 | rates /dev/stdin | sed 's/^/hg /'
    timeout -k 5 300 "$PY" "$vdir/vsock_host.py" pull "$target" 5001 "$BYTES" 2>&1 | rates /dev/stdin | sed 's/^/gh /'
  done >>"$work/$name.figs"
  timeout -k 5 60 "$PY" "$vdir/vsock_host.py" poke "$target" 5099 >/dev/null 2>&1
}

run_one() { # NAME ROUND
  local name=$1 r=$2
  case $name in
    line | irqfd)
      rm -f "$work/v.sock"
      start_vm "$name.$r" "$work/irq.cpio.gz" --vsock "cid=3,uds=$work/v.sock" --irq-delivery "$name"
      transfers "$name" "$work/v.sock"
      wait_vm 60
      # The guest ends with reboot -f: husk-vmm's status 1.
      [ "$rc" = 1 ] || echo "bench-irq: $name round $r: husk-vmm exit $rc: $(tail -2 "$work/$name.$r.err")"
      ;;
    qemu)
      qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC -m 256 -smp 1 \
        -nodefaults -no-user-config -nographic -serial "file:$work/qemu.$r.out" -no-reboot \
        -kernel "$KDIR/bzImage" -initrd "$work/irq.cpio.gz" -append "$CMDLINE" \
        -device vhost-vsock-device,guest-cid=3 </dev/null >/dev/null 2>"$work/qemu.err" &
      qemu_pid=$!
      transfers qemu vsock:3
      timeout 60 tail --pid="$qemu_pid" -f /dev/null
      kill -KILL "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; qemu_pid=""
      ;;
  esac
}

order=(line irqfd qemu)
for r in $(seq "$REPS"); do
  for name in "${order[@]}"; do run_one "$name" "$r"; done
  order=("${order[2]}" "${order[1]}" "${order[0]}")
done

samples() { awk -v d="$2" '$1 == d {print $2}' "$work/$1.figs" 2>/dev/null; }
fig() { local v; v=$(samples "$1" "$2" | median); echo "${v:-n/a}"; }
missing=""
for name in line irqfd qemu; do
  for d in hg gh; do [ -n "$(samples "$name" "$d")" ] || missing="$missing $name:$d"; done
done
ratio() { "$PY" "$vdir/ratio.py" "$(samples "$1" "$3" | xargs)" "$(samples "$2" "$3" | xargs)"; }
echo "bench-irq: medians of $REPS round(s) x $XFERS transfers of $MB MiB per figure, MiB/s"
for d in hg gh; do
  label="vsock h->g"; [ "$d" = gh ] && label="vsock g->h"
  printf '%-11s line %7s  irqfd %7s  qemu %7s  ratio line/irqfd %s  line/qemu %s\n' "$label" \
    "$(fig line "$d")" "$(fig irqfd "$d")" "$(fig qemu "$d")" "$(ratio line irqfd "$d")" "$(ratio line qemu "$d")"
done
if [ -n "$missing" ]; then
  echo "bench-irq: FAILED: figures missing:$missing"
  exit 1
fi
