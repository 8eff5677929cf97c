#!/usr/bin/env bash
# virtio-blk end to end: three disks (vda host pattern, vdb written by the guest, vdc
# read-only). Checks serials, that the guest reads what the host wrote, that the host reads
# what the guest wrote (with fsync, which must reach husk-vmm as a flush), that the read-only
# disk refuses writes (the guest kernel honours VIRTIO_BLK_F_RO even after `blockdev --setrw`,
# so no write reaches husk-vmm; its own refusal of a write to a read-only disk is a unit
# test) and stays byte-identical, and that each disk's counters in the VMM's control API
# tell what happened (read while the guest waits on vsock). This VM's interrupts go through
# irqfds (--irq-delivery irqfd); every other guest test uses the default, KVM_IRQ_LINE.
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
yes husk-block-e2e | head -c $((MB * 1048576)) | dd of=/dev/vdb bs=65536 conv=fsync 2>/dev/null && echo HUSK-VDB-WRITTEN
dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>/dev/null; echo \"HUSK-VDC-OPEN rc=\$?\"
blockdev --setrw /dev/vdc
msg=\$(dd if=/dev/zero of=/dev/vdc bs=4096 count=1 oflag=direct 2>&1 >/dev/null); echo \"HUSK-VDC-DIRECT rc=\$? \$msg\"
echo \"HUSK-VDC \$(md5sum </dev/vdc | cut -d' ' -f1)\"
vsock-tool wait 5099
poweroff -f" "$VSOCK_TOOL:/bin/vsock-tool"
start_vm block "$work/block.cpio.gz" \
  --disk "path=$work/a.img,id=rootfs" --disk "path=$work/b.img,id=scratch" --disk "path=$work/c.img,id=ro-disk,ro" \
  --vsock "cid=3,uds=$work/v.sock" --api-sock "$work/api.sock" --irq-delivery irqfd
# Once the guest is done with the disks, the counters; then the guest may power off.
for ((i = 0; i < 3000; i++)); do
  grep -aq '^HUSK-VDC ' "$work/block.out" 2>/dev/null && break
  kill -0 "$vmm_pid" 2>/dev/null || break
  sleep 0.1
done
curl -s --max-time 20 --unix-socket "$work/api.sock" http://localhost/vm/counters >"$work/counters.json"
timeout -k 5 90 python3 "$vdir/vsock_host.py" poke "$work/v.sock" 5099 >/dev/null 2>&1
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
if [[ "$(line HUSK-VDC-OPEN)" != "HUSK-VDC-OPEN rc=0" && "$(line HUSK-VDC-DIRECT)" != "HUSK-VDC-DIRECT rc=0"* ]] \
   && grep -q 'Operation not permitted' <<<"$(line HUSK-VDC-DIRECT)" \
   && [ "$(line "HUSK-VDC ")" = "HUSK-VDC $c_md5" ] && [ "$(md5 "$work/c.img")" = "$c_md5" ]; then
  ok "read-only disk refuses writes (open fails, forced direct write: EPERM), image untouched"
else bad "read-only: $(line HUSK-VDC-OPEN); $(line HUSK-VDC-DIRECT); $(line "HUSK-VDC "); host md5 $(md5 "$work/c.img") want $c_md5"; fi
# What the control API counted for each disk.
if counts=$(python3 - "$work/counters.json" "$MB" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
size = int(sys.argv[2]) << 20
a, b, ro = c["block.rootfs"], c["block.scratch"], c["block.ro-disk"]
checks = {
    "rootfs read whole, wrote nothing": a["read_bytes"] >= size and a["write_bytes"] == 0 and a["errors"] == 0,
    "scratch written whole and flushed": b["write_bytes"] >= size and b["flushes"] >= 1 and b["errors"] == 0,
    "requests count every request": all(d["requests"] >= d["reads"] + d["writes"] + d["flushes"] + 1 for d in (a, b, ro)),
    "ro-disk read, no write reached it": ro["read_bytes"] >= size and ro["write_bytes"] == 0 and ro["writes"] == 0 and ro["errors"] == 0,
}
bad = [k for k, v in checks.items() if not v]
print(("wrong: " + "; ".join(bad) + " in " if bad else "") + json.dumps({k: c[k] for k in ("block.rootfs", "block.scratch", "block.ro-disk")}))
sys.exit(1 if bad else 0)
PY
); then ok "control API counters: bytes read and written, flushes, no errors, per disk"
else bad "counters: ${counts:-$(head -c 300 "$work/counters.json" 2>/dev/null || echo none)}"; fi
if [ "$rc" = 0 ]; then ok "guest powered off, exit 0"; else bad "vmm exit $rc: $(tail -5 "$work/block.err")"; tail -20 "$work/block.out"; fi
finish
