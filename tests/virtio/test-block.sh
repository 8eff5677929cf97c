#!/usr/bin/env bash
# virtio-blk end to end: three disks (vda host pattern, vdb written by the guest, vdc
# read-only). Checks serials, that the guest reads what the host wrote, that the host reads
# what the guest wrote, and that the read-only disk refuses writes (even after the guest
# forces the block device writable) and stays byte-identical.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${HUSK_BLOCK_MB:-4}
python3 - "$work" "$MB" <<'PY'
import sys
work, mb = sys.argv[1], int(sys.argv[2])
P = 65521
T = bytes((((k * k * 31 + k * 7 + 13) >> 3) & 0xFF) for k in range(P))
data = (T * (mb * 2**20 // P + 1))[: mb * 2**20]
open(work + "/a.img", "wb").write(data)
open(work + "/b.img", "wb").write(b"\0" * mb * 2**20)
open(work + "/c.img", "wb").write(data[::-1])
PY
md5() { md5sum "$1" | cut -d' ' -f1; }
a_md5=$(md5 "$work/a.img") c_md5=$(md5 "$work/c.img")
mkinit_x block "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for d in vda vdb vdc; do echo \"HUSK-SERIAL \$d \$(cat /sys/block/\$d/serial) ro=\$(cat /sys/block/\$d/ro)\"; done
echo \"HUSK-VDA \$(md5sum </dev/vda | cut -d' ' -f1)\"
yes husk-block-e2e | head -c $((MB * 1048576)) >/dev/vdb && sync && echo HUSK-VDB-WRITTEN
dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>/dev/null; echo \"HUSK-VDC-OPEN rc=\$?\"
blockdev --setrw /dev/vdc
dd if=/dev/zero of=/dev/vdc bs=4096 count=1 oflag=direct 2>/dev/null; echo \"HUSK-VDC-DIRECT rc=\$?\"
echo \"HUSK-VDC \$(md5sum </dev/vdc | cut -d' ' -f1)\"
poweroff -f"
start_vm block "$work/block.cpio.gz" \
  --disk "path=$work/a.img,id=rootfs" --disk "path=$work/b.img,id=scratch" --disk "path=$work/c.img,id=ro-disk,ro"
wait_vm 300
out=$(tr -d '\r' <"$work/block.out")
line() { grep -a "^$1" <<<"$out" | head -1; }
if [ "$(line 'HUSK-SERIAL vda')" = "HUSK-SERIAL vda rootfs ro=0" ] && [ "$(line 'HUSK-SERIAL vdb')" = "HUSK-SERIAL vdb scratch ro=0" ] \
   && [ "$(line 'HUSK-SERIAL vdc')" = "HUSK-SERIAL vdc ro-disk ro=1" ]; then ok "serials rootfs/scratch/ro-disk in --disk order, vdc read-only"
else bad "serials: $(grep -a HUSK-SERIAL <<<"$out" | tr '\n' ';')"; fi
if [ "$(line HUSK-VDA)" = "HUSK-VDA $a_md5" ]; then ok "guest read the host's pattern from vda (md5 $a_md5)"
else bad "vda: '$(line HUSK-VDA)' want $a_md5"; fi
want_b=$(yes husk-block-e2e | head -c $((MB * 1048576)) | md5sum | cut -d' ' -f1)
if [ -n "$(line HUSK-VDB-WRITTEN)" ] && [ "$(md5 "$work/b.img")" = "$want_b" ]; then ok "host reads back what the guest wrote to vdb"
else bad "vdb: host md5 $(md5 "$work/b.img") want $want_b"; fi
if [[ "$(line HUSK-VDC-OPEN)" != "HUSK-VDC-OPEN rc=0" && "$(line HUSK-VDC-DIRECT)" != "HUSK-VDC-DIRECT rc=0" && -n "$(line HUSK-VDC-DIRECT)" ]] \
   && [ "$(line "HUSK-VDC ")" = "HUSK-VDC $c_md5" ] && [ "$(md5 "$work/c.img")" = "$c_md5" ]; then
  ok "read-only disk refuses writes (open and forced direct write fail), image untouched"
else bad "read-only: $(line HUSK-VDC-OPEN); $(line HUSK-VDC-DIRECT); $(line "HUSK-VDC "); host md5 $(md5 "$work/c.img") want $c_md5"; fi
if [ "$rc" = 0 ]; then ok "guest powered off, exit 0"; else bad "vmm exit $rc: $(tail -5 "$work/block.err")"; tail -20 "$work/block.out"; fi
finish
