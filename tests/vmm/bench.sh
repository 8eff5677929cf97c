#!/usr/bin/env bash
# husk-vmm benchmarks.
#
# In the testbed (or on a host with hardware virtualization; `make bench` runs it there):
#   for husk-vmm and QEMU `-M microvm` on the same bzImage + busybox initramfs, 1 vCPU,
#   512 MiB, in the same run, alternating, ROUNDS times (default 3):
#   - start -> /init: wall time from starting the VMM process to /init's first line on the
#     console (timestamps taken as lines arrive, bash $EPOCHREALTIME, no forks);
#   - memory overhead: VMM RSS minus the RSS of its guest-RAM mapping, from /proc/PID/smaps
#     while the guest idles;
#   printed per VMM (median) and as husk/QEMU ratios. husk-vmm on the ELF vmlinux is shown too.
# With --native (no nested guest can boot here): husk-vmm's time from process start to the
#   first KVM_RUN and its RSS before the vCPUs start, from its debug log.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
MEM_MB=512

if [ "${1:-}" = --native ]; then
  for i in $(seq "$ROUNDS"); do
    HUSK_LOG=debug timeout 20 "$VMM" --kernel "$KDIR/vmlinux" --memory ${MEM_MB}M --console none \
      --cmdline "$CMDLINE" 2>"$work/native.$i" >/dev/null &
    pid=$!
    for _ in $(seq 200); do grep -q 'first KVM_RUN' "$work/native.$i" 2>/dev/null && break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    first=$(sed -n 's/.*first KVM_RUN at \(.*\) after process start.*/\1/p' "$work/native.$i")
    rss=$(sed -n 's/.*starting vCPUs.*; \(RSS .*\)/\1/p' "$work/native.$i")
    echo "husk-vmm native round $i: process start -> first KVM_RUN $first; before the guest runs: $rss"
  done
  exit 0
fi

command -v qemu-system-x86_64 >/dev/null || { echo "bench: qemu-system-x86_64 missing" >&2; exit 1; }
mkinit idle 'echo HUSK-BENCH-INIT; exec sleep 100000'
initrd=$work/idle.cpio.gz

# Overhead in KiB: total Rss minus the Rss of the guest-RAM mapping (the mapping whose size is
# the guest memory, up to 8 MiB more for alignment; the most resident one if several).
overhead() {
  awk -v lo=$((MEM_MB * 1024)) -v hi=$((MEM_MB * 1024 + 8192)) '
       /^Size:/{size=$2} /^Rss:/{rss+=$2; if (size>=lo && size<=hi && $2>ramrss) ramrss=$2}
       END{print rss-ramrss}' "/proc/$1/smaps"
}

# run_one NAME CMD...: prints "SECONDS KIB" (start -> /init line, overhead).
run_one() {
  local name=$1; shift
  local t0=$EPOCHREALTIME t1="" line pid
  coproc VM { exec "$@" 2>"$work/$name.err"; }
  pid=$VM_PID
  while IFS= read -r -t 300 line <&"${VM[0]}"; do
    if [[ "$line" == *HUSK-BENCH-INIT* ]]; then t1=$EPOCHREALTIME; break; fi
  done
  local kib=-1
  if [ -n "$t1" ]; then sleep 2; kib=$(overhead "$pid"); fi
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  [ -n "$t1" ] || { echo "bench: $name never reached /init: $(tail -3 "$work/$name.err")" >&2; echo "nan -1"; return; }
  awk -v a="$t0" -v b="$t1" -v k="$kib" 'BEGIN{printf "%.2f %d\n", b-a, k}'
}

qemu=(qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC -m $MEM_MB
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$KDIR/bzImage" -initrd "$initrd"
      -append "console=ttyS0 reboot=t panic=-1 lpj=4000000 tsc=reliable quiet")
husk_bz=("$VMM" --kernel "$KDIR/bzImage" --initrd "$initrd" --memory ${MEM_MB}M --vcpus 1 --cmdline "$CMDLINE")
husk_elf=("$VMM" --kernel "$KDIR/vmlinux" --initrd "$initrd" --memory ${MEM_MB}M --vcpus 1 --cmdline "$CMDLINE")

declare -A T M
for r in $(seq "$ROUNDS"); do
  for v in husk_bz qemu husk_elf; do
    case $v in
      husk_bz) res=$(run_one "$v" "${husk_bz[@]}") ;;
      qemu) res=$(run_one "$v" "${qemu[@]}") ;;
      husk_elf) res=$(run_one "$v" "${husk_elf[@]}") ;;
    esac
    T[$v]+="${res% *} "; M[$v]+="${res#* } "
    echo "round $r $v: start->/init ${res% *} s, overhead ${res#* } KiB"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR ? a[int((NR+1)/2)] : "nan")}'; }
tb=$(median <<<"${T[husk_bz]}") tq=$(median <<<"${T[qemu]}") te=$(median <<<"${T[husk_elf]}")
mb=$(median <<<"${M[husk_bz]}") mq=$(median <<<"${M[qemu]}") me=$(median <<<"${M[husk_elf]}")
echo "husk-vmm (bzImage):  start->/init ${tb} s, memory overhead $((mb / 1024)).$(( (mb % 1024) * 10 / 1024 )) MiB"
echo "husk-vmm (vmlinux):  start->/init ${te} s, memory overhead $((me / 1024)).$(( (me % 1024) * 10 / 1024 )) MiB"
echo "QEMU microvm:        start->/init ${tq} s, memory overhead $((mq / 1024)).$(( (mq % 1024) * 10 / 1024 )) MiB"
# QEMU microvm boots only the bzImage (the kernel has no PVH note); husk-vmm's default kernel
# is the ELF vmlinux (no decompression in the guest). Both ratios are shown.
awk -v a="$tb" -v e="$te" -v b="$tq" -v c="$mb" -v f="$me" -v d="$mq" 'BEGIN{
  if (b > 0 && d > 0) {
    printf "ratio husk/QEMU, both bzImage: start->/init %.2f, memory overhead %.2f\n", a/b, c/d
    printf "ratio husk(vmlinux)/QEMU(bzImage): start->/init %.2f, memory overhead %.2f\n", e/b, f/d
  } else print "ratio: n/a"}'
