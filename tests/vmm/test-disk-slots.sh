#!/usr/bin/env bash
# Disk slots end to end: a guest boots with one boot disk and two empty slots (--disk-slots 2)
# and the host attaches and detaches ext4 images through the control API while it runs.
#  1. slot0 <- image "one" (read-write, serial ctr-one): the guest sees its size and serial,
#     mounts it, reads a file, writes one (the host reads it back after the detach).
#  2. slot1 <- image "ro" read-only: the guest mounts it read-only and reads it; a direct
#     write fails with an I/O error from the device; the image stays byte-identical.
#  3. Bad requests get 4xx answers naming the problem (occupied, unknown slot, boot disk,
#     bad JSON, missing file, relative path, detach of an empty slot).
#  4. slot0 is detached (size 0, empty serial) and image "two" attached to it. The guest held
#     /dev/vdb open (fd 3) across the swap: without a flush, what it reads of the block device
#     is reported (page-cache blocks of image one may survive the capacity change); after
#     `blockdev --flushbufs` it must read image two, and mounting shows two's files.
#  5. slot1 is detached and image "three" attached with no process holding /dev/vdc: what the
#     guest reads without a flush is reported too.
#  6. The counters of both slots and GET /vm/disks through the API; then detaching slot1
#     tells the guest to power off.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
vmm_pid=""
cleanup() {
  [ -n "$vmm_pid" ] && kill -KILL "$vmm_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
for t in mkfs.ext4 debugfs curl python3; do command -v "$t" >/dev/null || { echo "test-disk-slots: $t missing (make deps)" >&2; exit 1; }; done

# mkimg NAME LABEL MIB TEXT: an ext4 image whose /hello.txt holds TEXT.
mkimg() {
  mkdir -p "$work/$1.d"
  echo "$4" >"$work/$1.d/hello.txt"
  mkfs.ext4 -q -F -L "$2" -d "$work/$1.d" "$work/$1.img" "$3M" >/dev/null 2>&1 || { echo "mkfs.ext4 $1 failed" >&2; exit 1; }
}
mkimg one one 8 "content of image one"
mkimg ro ro 6 "content of the read-only image"
mkimg two two 12 "content of image two"
mkimg three three 4 "content of image three"
truncate -s 1M "$work/boot.img"
ro_md5=$(md5sum <"$work/ro.img")

mkinit slots 'mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
sz() { cat /sys/block/$1/size; }
ser() { cat /sys/block/$1/serial; }
# The ext4 volume label: 16 bytes at 1144 (superblock at 1024, s_volume_name at 0x78),
# read through the block device page cache.
label() { dd if=/dev/$1 bs=1 skip=1144 count=16 2>/dev/null | tr -d "\0"; }
# wait_size DEV zero|nonzero: polls the capacity (the config change lands asynchronously).
wait_size() {
  i=0
  while [ $i -lt 3000 ]; do
    s=$(sz $1)
    if [ "$2" = zero ] && [ "$s" = 0 ]; then return 0; fi
    if [ "$2" = nonzero ] && [ "$s" != 0 ]; then return 0; fi
    sleep 0.1; i=$((i + 1))
  done
  echo "HUSK-TIMEOUT waiting for $1 to be $2"; return 1
}
for d in vda vdb vdc; do echo "HUSK-BOOT $d size=$(sz $d) serial=[$(ser $d)]"; done
echo HUSK-READY
wait_size vdb nonzero
exec 3</dev/vdb
echo "HUSK-ATTACHED vdb size=$(sz vdb) serial=[$(ser vdb)] label=$(label vdb)"
mount -t ext4 /dev/vdb /mnt && echo "HUSK-READ-1 $(cat /mnt/hello.txt)"
echo written-by-the-guest >/mnt/guest.txt && sync && umount /mnt && echo HUSK-WROTE-1
wait_size vdc nonzero
echo "HUSK-ATTACHED vdc size=$(sz vdc) serial=[$(ser vdc)]"
mount -t ext4 -o ro,noload /dev/vdc /mnt && echo "HUSK-READ-RO $(cat /mnt/hello.txt)" && umount /mnt
msg=$(dd if=/dev/zero of=/dev/vdc bs=4096 count=1 seek=16 oflag=direct 2>&1 >/dev/null); echo "HUSK-RO-WRITE rc=$? $msg"
echo HUSK-PHASE2-DONE
wait_size vdb zero
echo "HUSK-DETACHED vdb size=$(sz vdb) serial=[$(ser vdb)]"
wait_size vdb nonzero
echo "HUSK-REATTACHED vdb size=$(sz vdb) serial=[$(ser vdb)]"
echo "HUSK-HELD-NOFLUSH label=$(label vdb)"
blockdev --flushbufs /dev/vdb
echo "HUSK-HELD-FLUSHED label=$(label vdb)"
exec 3<&-
mount -t ext4 -o ro,noload /dev/vdb /mnt && echo "HUSK-READ-2 $(cat /mnt/hello.txt) guest.txt=$(ls /mnt/guest.txt 2>/dev/null || echo absent)" && umount /mnt
echo HUSK-PHASE4-DONE
wait_size vdc zero
echo HUSK-VDC-EMPTY
wait_size vdc nonzero
echo "HUSK-UNHELD-NOFLUSH label=$(label vdc) serial=[$(ser vdc)]"
blockdev --flushbufs /dev/vdc
echo "HUSK-UNHELD-FLUSHED label=$(label vdc)"
echo HUSK-PHASE5-DONE
wait_size vdc zero
echo HUSK-POWEROFF
poweroff -f'

"$VMM" --kernel "$KDIR/vmlinux" --initrd "$work/slots.cpio.gz" --vcpus 1 --memory 256M --cmdline "$CMDLINE" \
  --disk "path=$work/boot.img,id=boot" --disk-slots 2 --api-sock "$work/api.sock" >"$work/slots.out" 2>"$work/slots.err" &
vmm_pid=$!
api() { curl -fsS --max-time 60 --unix-socket "$work/api.sock" "$@"; }
# refused EXPECTED_STATUS MUST_CONTAIN METHOD PATH [BODY]: a request that must fail.
refused() {
  local want=$1 text=$2 method=$3 path=$4 body=${5:-} code
  code=$(curl -sS --max-time 60 --unix-socket "$work/api.sock" -o "$work/answer" -w '%{http_code}' -X "$method" \
    ${body:+-H 'Content-Type: application/json' --data "$body"} "http://localhost$path")
  if [ "$code" = "$want" ] && grep -qF -- "$text" "$work/answer"; then ok "$method $path -> $code: $(cat "$work/answer")"
  else bad "$method $path: want $want with '$text', got $code: $(cat "$work/answer" 2>/dev/null)"; fi
}
attach() { api -X PUT -H 'Content-Type: application/json' --data "$2" "http://localhost/vm/disks/$1"; }
# wait_line PREFIX: waits (at most 300 s) for a console line starting with PREFIX.
wait_line() {
  local i
  for ((i = 0; i < 3000; i++)); do
    grep -aq "^$1" "$work/slots.out" 2>/dev/null && return 0
    kill -0 "$vmm_pid" 2>/dev/null || break
    sleep 0.1
  done
  bad "no console line '$1' (VMM $(kill -0 "$vmm_pid" 2>/dev/null && echo running || echo gone)); last lines:"
  tr -d '\r' <"$work/slots.out" | tail -15; tail -5 "$work/slots.err"
  exit 1
}
line() { tr -d '\r' <"$work/slots.out" | grep -a "^$1" | head -1; }
expect() { # expect PREFIX EXACT_LINE WHAT
  if [ "$(line "$1")" = "$2" ]; then ok "$3"; else bad "$3: got '$(line "$1")', want '$2'"; fi
}

wait_line HUSK-READY
expect "HUSK-BOOT vdb" "HUSK-BOOT vdb size=0 serial=[]" "slot0 boots empty (vdb: size 0, no serial)"
expect "HUSK-BOOT vdc" "HUSK-BOOT vdc size=0 serial=[]" "slot1 boots empty (vdc)"
expect "HUSK-BOOT vda" "HUSK-BOOT vda size=2048 serial=[boot]" "the boot disk comes first (vda)"

# 1. Attach image one to slot0.
if info=$(attach slot0 "{\"path\":\"$work/one.img\",\"id\":\"ctr-one\"}"); then
  grep -q '"sectors":16384' <<<"$info" && grep -q '"attached":true' <<<"$info" && ok "PUT slot0: $info" || bad "PUT slot0 answer: $info"
else bad "PUT slot0 failed"; fi
wait_line HUSK-WROTE-1
expect "HUSK-ATTACHED vdb" "HUSK-ATTACHED vdb size=16384 serial=[ctr-one] label=one" "guest sees slot0's new size, serial and image"
expect HUSK-READ-1 "HUSK-READ-1 content of image one" "guest mounts slot0 and reads image one's file"

# 2. Attach the read-only image to slot1.
attach slot1 "{\"path\":\"$work/ro.img\",\"id\":\"ctr-ro\",\"read_only\":true}" >/dev/null || bad "PUT slot1 (read-only) failed"
wait_line HUSK-PHASE2-DONE
expect "HUSK-ATTACHED vdc" "HUSK-ATTACHED vdc size=12288 serial=[ctr-ro]" "guest sees slot1's size and serial"
expect HUSK-READ-RO "HUSK-READ-RO content of the read-only image" "guest mounts the read-only attachment and reads it"
ro_write=$(line HUSK-RO-WRITE)
if [[ "$ro_write" != "HUSK-RO-WRITE rc=0"* ]] && grep -q 'Input/output error' <<<"$ro_write" && [ "$(md5sum <"$work/ro.img")" = "$ro_md5" ]; then
  ok "a write to the read-only attachment fails in the guest ($ro_write), image untouched"
else bad "read-only attachment: '$ro_write', image md5 $(md5sum <"$work/ro.img" | cut -d' ' -f1)"; fi

# 3. Bad requests.
refused 409 "occupied by $work/one.img" PUT /vm/disks/slot0 "{\"path\":\"$work/two.img\"}"
refused 404 'no disk or slot named' PUT /vm/disks/slot9 "{\"path\":\"$work/two.img\"}"
refused 409 "boot is a boot disk" PUT /vm/disks/boot "{\"path\":\"$work/two.img\"}"
refused 400 "missing field \`path\`" PUT /vm/disks/slot0 '{"id":"x"}'
refused 400 "unknown field \`size\`" PUT /vm/disks/slot0 "{\"path\":\"$work/two.img\",\"size\":1}"
refused 400 "must be an absolute path" PUT /vm/disks/slot0 '{"path":"two.img"}'
refused 405 "GET not allowed" GET /vm/pause
api -X DELETE http://localhost/vm/disks/slot1 >/dev/null || bad "DELETE slot1 failed"
refused 409 "slot slot1 is empty" DELETE /vm/disks/slot1
refused 400 "No such file or directory" PUT /vm/disks/slot1 "{\"path\":\"$work/missing.img\"}"
grep -qF "$work/missing.img" "$work/answer" && ok "the open error names the path" || bad "open error without the path: $(cat "$work/answer")"
attach slot1 "{\"path\":\"$work/ro.img\",\"id\":\"ctr-ro\",\"read_only\":true}" >/dev/null || bad "PUT slot1 again failed"

# 4. Detach slot0, attach image two to it.
if info=$(api -X DELETE http://localhost/vm/disks/slot0); then
  grep -q '"attached":false' <<<"$info" && grep -q '"sectors":0' <<<"$info" && ok "DELETE slot0: $info" || bad "DELETE slot0 answer: $info"
else bad "DELETE slot0 failed"; fi
wait_line "HUSK-DETACHED vdb"
expect "HUSK-DETACHED vdb" "HUSK-DETACHED vdb size=0 serial=[]" "guest sees slot0 empty again (size 0, no serial)"
if [ "$(debugfs -R 'cat /guest.txt' "$work/one.img" 2>/dev/null)" = written-by-the-guest ]; then ok "host reads what the guest wrote to image one"
else bad "image one lacks the guest's file"; fi
attach slot0 "{\"path\":\"$work/two.img\",\"id\":\"ctr-two\"}" >/dev/null || bad "PUT slot0 (image two) failed"
wait_line HUSK-PHASE4-DONE
expect "HUSK-REATTACHED vdb" "HUSK-REATTACHED vdb size=24576 serial=[ctr-two]" "guest sees slot0's second image: new size and serial"
echo "info: held /dev/vdb across the swap, no flush: $(line HUSK-HELD-NOFLUSH)"
expect HUSK-HELD-FLUSHED "HUSK-HELD-FLUSHED label=two" "after blockdev --flushbufs the guest reads image two's blocks"
expect HUSK-READ-2 "HUSK-READ-2 content of image two guest.txt=absent" "guest mounts slot0 and reads image two, nothing of image one"

# 5. Reuse slot1 with nobody holding /dev/vdc.
api -X DELETE http://localhost/vm/disks/slot1 >/dev/null || bad "DELETE slot1 failed"
# The guest must see the empty slot before the next image lands (it re-reads the capacity
# asynchronously: a quick re-attach could hide the empty state from it).
wait_line HUSK-VDC-EMPTY
attach slot1 "{\"path\":\"$work/three.img\",\"id\":\"ctr-three\"}" >/dev/null || bad "PUT slot1 (image three) failed"
wait_line HUSK-PHASE5-DONE
echo "info: /dev/vdc not held across the swap, no flush: $(line HUSK-UNHELD-NOFLUSH)"
expect HUSK-UNHELD-FLUSHED "HUSK-UNHELD-FLUSHED label=three" "slot1 reused: the guest reads image three after a flush"

# 6. Counters and the list, then power off.
if counts=$(api http://localhost/vm/counters | python3 -c '
import json, sys
c = json.load(sys.stdin)
s0, s1 = c["block.slot0"], c["block.slot1"]
checks = {
    "slot0: 2 attaches, 1 detach, 1 refusal (occupied)": (s0["attaches"], s0["detaches"], s0["hotplug_errors"]) == (2, 1, 1),
    "slot1: 3 attaches, 2 detaches, 2 refusals (empty, missing file)": (s1["attaches"], s1["detaches"], s1["hotplug_errors"]) == (3, 2, 2),
    "slot0 served reads and writes": s0["reads"] > 0 and s0["writes"] > 0 and s0["write_bytes"] > 0,
    "slot1: no write reached the read-only image, the refused one is an error": s1["write_bytes"] == 0 and s1["errors"] >= 1,
}
bad = [k for k, v in checks.items() if not v]
print(("wrong: " + "; ".join(bad) + " in " if bad else "") + json.dumps({"slot0": s0, "slot1": s1}))
sys.exit(1 if bad else 0)'); then ok "counters: $counts"; else bad "counters: $counts"; fi
if disks=$(api http://localhost/vm/disks) && python3 -c '
import json, sys
d = json.loads(sys.argv[1])
want = [("boot", "boot", True, "boot"), ("slot0", "slot", True, "ctr-two"), ("slot1", "slot", True, "ctr-three")]
sys.exit(0 if [(x["slot"], x["kind"], x["attached"], x["id"]) for x in d] == want else 1)' "$disks"; then ok "GET /vm/disks lists boot, slot0 (two), slot1 (three)"
else bad "GET /vm/disks: ${disks:-}"; fi
api -X DELETE http://localhost/vm/disks/slot1 >/dev/null || bad "final DELETE slot1 failed"
rc=0
for ((i = 0; i < 3000; i++)); do kill -0 "$vmm_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$vmm_pid" 2>/dev/null; then bad "guest did not power off"; kill -KILL "$vmm_pid"; fi
wait "$vmm_pid" || rc=$?
vmm_pid=""
[ "$rc" = 0 ] && ok "guest powered off, exit 0" || bad "husk-vmm exit $rc: $(tail -3 "$work/slots.err")"
[ -e "$work/api.sock" ] && bad "API socket left behind" || ok "API socket removed"
finish
