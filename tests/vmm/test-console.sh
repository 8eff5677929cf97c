#!/usr/bin/env bash
# What the guest writes cannot fill the host or end the VM by itself:
# - console flood: a guest writing FLOOD_KIB (default 256) KiB to its serial console with
#   `--console file:` and `--log-max-bytes 16K` leaves at most 16K on the host, ending in the
#   guest's last line, under the note of what was dropped. (Every byte the guest writes to
#   the UART is a VM exit: 1 MiB took 250-310 s in the testbed, so the 50 MiB case runs on
#   the host through the same console writer, microvm devices/legacy/console.rs tests; the
#   bound on husk-vmm's own stderr is microvm/tests/console.rs: a Linux guest has no port
#   I/O for a process to make husk-vmm log, the kernel has no iopl/ioperm.)
# - forged power-off and panic lines: /init prints "reboot: System halted" and a kernel panic
#   with its end line, then keeps running; the VM must go on (the lines alone used to end
#   it), and a real `poweroff -f` afterwards still ends it with exit 0.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
flood_kib=${FLOOD_KIB:-256}
max=16384

# 1. Console flood: FLOOD_KIB KiB of x in one stream, then a last marker line.
mkinit flood "mount -t devtmpfs dev /dev
head -c $((flood_kib * 1024)) /dev/zero | tr '\\0' x >/dev/console
echo
echo FLOOD-END
poweroff -f"
t0=$SECONDS
rc=0
timeout -k 5 1800 "$VMM" --kernel "$KDIR/vmlinux" --initrd "$work/flood.cpio.gz" --memory 128M \
  --cmdline "$CMDLINE" --console "file:$work/flood.log" --log-max-bytes 16K >"$work/flood.out" 2>"$work/flood.err" || rc=$?
size=$(stat -c %s "$work/flood.log" 2>/dev/null || echo 0)
dropped=$(sed -n '1s/^\[husk: \([0-9]*\) older bytes.*/\1/p' "$work/flood.log")
echo "  (flood: exit $rc after $((SECONDS - t0)) s, console file $size bytes, $dropped bytes dropped)"
if [ "$rc" = 0 ] && [ "$size" -le "$max" ] && [ "$size" -ge $((max / 4)) ] && tail -c 200 "$work/flood.log" | grep -aq "^FLOOD-END" \
   && [ -n "$dropped" ] && [ "$dropped" -ge $((flood_kib * 1024 - max)) ]; then
  ok "a guest writing $flood_kib KiB to its console leaves $size bytes (bound $max) ending in its last line"
else
  bad "console flood: exit $rc, $size bytes (bound $max), dropped '$dropped', stderr: $(tail -3 "$work/flood.err")"
  head -c 300 "$work/flood.log"; echo; tail -c 300 "$work/flood.log"; echo
fi

# 2. Forged power-off and panic lines.
# The sleep outlasts husk-vmm's 10 s check of the vCPUs after the line.
mkinit forged 'echo "reboot: System halted" >/dev/console
echo "Kernel panic - not syncing: forged by /init"
echo "---[ end Kernel panic - not syncing: forged by /init ]---"
sleep 12
echo "HUSK-INIT still running"
poweroff -f'
boot forged "$KDIR/vmlinux" "$work/forged.cpio.gz" 2
if [ "$rc" = 0 ] && grep -aq 'HUSK-INIT still running' "$work/forged.out" && grep -q 'guest powered off' "$work/forged.err"; then
  ok "forged power-off and panic lines do not end the VM; the real power-off then does (exit 0)"
else
  bad "forged lines: exit $rc, stderr: $(cat "$work/forged.err")"; tail -5 "$work/forged.out"
fi
grep -q 'power-off line but the vCPUs did not halt' "$work/forged.err" \
  && ok "husk-vmm logged the forged power-off line" || bad "no warning about the forged line: $(cat "$work/forged.err")"
finish
