#!/usr/bin/env bash
# Boots the husk guest kernel (ELF vmlinux and bzImage, 1 and 2 vCPUs) with a busybox
# initramfs whose /init prints the CPU count and MemTotal and powers off; then reboot and
# panic. Checks /init ran, what it saw, and husk-vmm's exit status and reason line.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

mkinit poweroff 'mount -t proc proc /proc
echo "HUSK-INIT nproc=$(nproc) memtotal_kb=$(awk "/MemTotal/{print \$2}" /proc/meminfo)"
poweroff -f'
mkinit reboot 'echo HUSK-INIT reboot; reboot -f'
mkinit panic 'echo HUSK-INIT panic; sleep 1; exit 7'

for kernel in vmlinux bzImage; do
  for vcpus in 1 2; do
    n=$kernel-$vcpus
    boot "$n" "$KDIR/$kernel" "$work/poweroff.cpio.gz" "$vcpus"
    line=$(grep -a 'HUSK-INIT nproc=' "$work/$n.out" | tr -d '\r')
    mem=$(sed -n 's/.*memtotal_kb=\([0-9]*\).*/\1/p' <<<"$line")
    if [ "$rc" = 0 ] && grep -q 'guest powered off' "$work/$n.err" && [[ "$line" == *"nproc=$vcpus "* ]] \
       && [ -n "$mem" ] && [ "$mem" -gt 200000 ] && [ "$mem" -le 262144 ]; then
      ok "$kernel, $vcpus vCPU: /init saw nproc=$vcpus, MemTotal $mem kB, powered off -> exit 0"
    else
      bad "$kernel, $vcpus vCPU: exit $rc, init line '$line', stderr: $(cat "$work/$n.err")"
      tail -20 "$work/$n.out"
    fi
  done
done

boot reboot "$KDIR/vmlinux" "$work/reboot.cpio.gz" 1
if [ "$rc" = 1 ] && grep -q 'HUSK-INIT reboot' "$work/reboot.out" && grep -q 'guest rebooted' "$work/reboot.err"; then
  ok "reboot -f -> exit 1"
else
  bad "reboot: exit $rc, stderr: $(cat "$work/reboot.err")"; tail -20 "$work/reboot.out"
fi

boot panic "$KDIR/bzImage" "$work/panic.cpio.gz" 2
if [ "$rc" = 3 ] && grep -q 'HUSK-INIT panic' "$work/panic.out" && grep -q 'panicked: Kernel panic - not syncing: Attempted to kill init' "$work/panic.err"; then
  ok "/init exits -> kernel panic -> exit 3"
else
  bad "panic: exit $rc, stderr: $(cat "$work/panic.err")"; tail -20 "$work/panic.out"
fi
# Triple fault: a tiny 64-bit guest (ELF) writes to the serial port, then executes int3 with
# the empty IDT husk-vmm boots with: #BP -> #GP -> #DF -> shutdown (KVM_EXIT_SHUTDOWN).
python3 - "$work/triple.elf" <<'PY'
import struct, sys
code = bytes([0x66, 0xba, 0xf8, 0x03]) + b"".join(bytes([0xb0, c, 0xee]) for c in b"TRIPLE\n") + bytes([0xcc, 0xf4])
f = bytearray(0x1000)
f[0:7] = b"\x7fELF\x02\x01\x01"
f[16:24] = struct.pack("<HHI", 2, 62, 1)
f[24:40] = struct.pack("<QQ", 0x200000, 64)
f[52:58] = struct.pack("<HHH", 64, 56, 1)
f[64:120] = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x200000, 0x200000, len(code), len(code), 0x1000)
open(sys.argv[1], "wb").write(bytes(f) + code)
PY
rc=0
timeout -k 5 120 "$VMM" --kernel "$work/triple.elf" --memory 32M >"$work/triple.out" 2>"$work/triple.err" || rc=$?
if [ "$rc" = 3 ] && grep -q TRIPLE "$work/triple.out" && grep -q 'triple-faulted' "$work/triple.err"; then
  ok "triple fault -> exit 3"
else
  bad "triple fault: exit $rc, stderr: $(cat "$work/triple.err")"
fi
finish
