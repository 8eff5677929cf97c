#!/usr/bin/env bash
# Smoke test, run inside the testbed: the husk guest kernel boots under QEMU -M microvm with KVM,
# its /init runs, and the VM powers itself off. Prints the boot-to-init time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
kernel="$repo/build/kernel/bzImage"
[ -f "$kernel" ] || { echo "FAIL: $kernel missing (make kernel)"; exit 1; }
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm here: run me through tests/testbed/run"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "HUSK-SMOKE init ran: uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo)"
reboot -f
INIT
"$repo/tests/testbed/mkinitramfs.sh" "$work/initrd.gz" "$work/init"
start=$(date +%s%N)
rc=0
timeout 300 qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC \
  -m 512 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
  -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 reboot=t panic=-1 lpj=4000000 tsc=reliable quiet" \
  </dev/null >"$work/console" 2>&1 || rc=$?
wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))
line=$(grep -a "HUSK-SMOKE init ran" "$work/console" || true)
if [ "$rc" != 0 ] || [ -z "$line" ]; then
  echo "FAIL: qemu exit $rc; console:"; cat "$work/console"; exit 1
fi
echo "$line"
echo "qemu microvm: guest /init after $(echo "$line" | sed 's/.*uptime=\([0-9.]*\).*/\1/') s of guest uptime; VM powered off by itself; ${wall_ms} ms wall from QEMU start to exit"
