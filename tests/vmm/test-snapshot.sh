#!/usr/bin/env bash
# Snapshot and restore of a guest with no virtio device (serial console only), end to end.
# The guest's /init fills /data (in its RAM) with 16 MiB of random data, prints its md5
# (MD5 <sum>) and ticks: TICK n every 0.2 s, every 10th tick with the md5 of /data.
#  1. One vCPU, 128M: a snapshot while running is refused (409, nothing written), one into a
#     non-empty dir too (400 naming it); paused, the snapshot answers 200 and the guest stays
#     paused; the VM is killed. The dir holds state.json (JSON) and memory, a sparse file of
#     128 MiB apparent size.
#  2. Two restores of that snapshot at once (a template): each goes on where the guest was (no
#     boot: no INIT-START line; its first tick >= the last one before the snapshot; consecutive
#     ticks, 10 more, so timers and interrupts work) with /data intact (the boot's md5); one is
#     paused while the other goes on, GET /vm answers, resume works; the snapshot's files stay
#     unchanged. Their memory is the snapshot's file mapped copy-on-write: each VMM maps it,
#     the 16 MiB of /data that both guests read are pages the two share (Shared_* in
#     /proc/PID/smaps), and a snapshot of a restored VM is refused (409), its dir left empty.
#  3. The same with 2 vCPUs, restored once.
#  4. A VM with a boot disk (--disk) refuses the snapshot (409 naming the device)
#     and goes on running after a resume.
#  5. --restore of a missing dir, of a dir without state.json or with a corrupt one, and with
#     --kernel, exits non-zero at once naming the file (the flag).
#  6. No husk-vmm of this test and no API socket is left.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
# call (and vm, kill_vm, which this test defines its own way below).
# shellcheck source=tests/vmm/snapshot-lib.sh
. "$(dirname "$0")/snapshot-lib.sh"
for t in curl python3; do command -v "$t" >/dev/null || { echo "test-snapshot: $t missing (make deps)" >&2; exit 1; }; done
declare -A pid last sum
cleanup() {
  local p
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

mkinit ticker 'mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo INIT-START
dd if=/dev/urandom of=/data bs=1048576 count=16 2>/dev/null
echo "MD5 $(md5sum /data | cut -c1-32)"
n=0
while true; do
  n=$((n + 1))
  if [ $((n % 10)) = 0 ]; then echo "TICK $n $(md5sum /data | cut -c1-32)"; else echo "TICK $n"; fi
  sleep 0.2
done'

# complete LOG: the console lines the guest has ended, without \r (one still being written,
# e.g. cut by the snapshot, is left out).
complete() { if [ -z "$(tail -c1 "$1")" ]; then tr -d '\r' <"$1"; else tr -d '\r' <"$1" | sed '$d'; fi 2>/dev/null; }
ticks() { complete "$1" | sed -n 's/^TICK \([0-9][0-9]*\)\( [0-9a-f]\{32\}\)\{0,1\}$/\1/p'; }
sums() { complete "$1" | sed -n 's/^TICK [0-9]* \([0-9a-f]\{32\}\)$/\1/p'; }
last_tick() { local t; t=$(ticks "$1" | tail -1); echo "${t:-0}"; }
gone() { ! kill -0 "$1" 2>/dev/null; }
# jget JSON KEY[.KEY]: a field of a JSON object (empty if absent or not JSON).
jget() { python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2" 2>/dev/null; }
# vm NAME ARGS...: husk-vmm ARGS in the background, console $work/NAME.log, API $work/NAME.sock.
vm() {
  local n=$1
  shift
  "$VMM" "$@" --console "file:$work/$n.log" --api-sock "$work/$n.sock" >"$work/$n.out" 2>"$work/$n.err" &
  pid[$n]=$!
}
boot_vm() { vm "$1" --kernel "$KDIR/vmlinux" --initrd "$work/ticker.cpio.gz" --vcpus "$2" --memory 128M --cmdline "$CMDLINE" "${@:3}"; }
# expect NAME METHOD PATH JSON STATUS TEXT WHAT: the answer has STATUS and contains TEXT.
expect() {
  call "$1" "$2" "$3" "$4"
  if [ "$code" = "$5" ] && grep -qF -- "$6" <<<"$body"; then ok "$7: $code $body"; else bad "$7: want $5 with '$6', got $code $body"; fi
}
# need_tick NAME N SECS: waits for NAME's TICK N; ends the test if it does not come.
need_tick() {
  local n=$1 end=$((SECONDS + $3))
  while (($(last_tick "$work/$n.log") < $2)); do
    if gone "${pid[$n]}" || ((SECONDS >= end)); then
      bad "$n: no TICK $2 within $3 s (VMM $(gone "${pid[$n]}" && echo gone || echo running)); last lines:"
      tr -d '\r' <"$work/$n.log" | tail -5; tail -5 "$work/$n.err"
      exit 1
    fi
    sleep 0.2
  done
}
# stop NAME: kills NAME through the API; it must exit 0 and remove its socket.
stop() {
  local n=$1 rc=0 i
  call "$n" PUT /vm/kill
  for ((i = 0; i < 300; i++)); do gone "${pid[$n]}" && break; sleep 0.2; done
  gone "${pid[$n]}" || { bad "$n still running after PUT /vm/kill ($code $body)"; kill -KILL "${pid[$n]}"; }
  wait "${pid[$n]}" || rc=$?
  unset "pid[$n]"
  if [ "$rc" = 0 ] && [ ! -e "$work/$n.sock" ]; then ok "$n killed through the API: exit 0, socket removed"
  else bad "$n after the kill: exit $rc, socket $([ -e "$work/$n.sock" ] && echo left || echo removed): $(tail -3 "$work/$n.err")"; fi
}
# original NAME VCPUS: boots the ticker and snapshots it, paused, into $work/NAME.snap; kills it.
# Sets last[NAME] (the last tick before the snapshot) and sum[NAME] (the md5 of /data at boot).
original() {
  local n=$1 snap=$work/$1.snap t0 size alloc
  boot_vm "$n" "$2"
  need_tick "$n" 5 180
  sum[$n]=$(complete "$work/$n.log" | sed -n 's/^MD5 \([0-9a-f]\{32\}\)$/\1/p' | head -1)
  [ -n "${sum[$n]}" ] || bad "$n: no MD5 line at boot"
  mkdir "$snap" "$work/$n.full" && touch "$work/$n.full/state.json"
  expect "$n" PUT /vm/snapshot "{\"dir\":\"$snap\"}" 409 '"error"' "$n: snapshot while running refused"
  [ -z "$(ls -A "$snap")" ] || bad "$n: the refused snapshot wrote into its dir: $(ls -A "$snap")"
  call "$n" PUT /vm/pause
  [ "$code" = 200 ] || bad "$n: pause: $code $body"
  expect "$n" PUT /vm/snapshot "{\"dir\":\"$work/$n.full\"}" 400 "$work/$n.full" "$n: snapshot into a dir that already holds a state.json refused"
  last[$n]=$(last_tick "$work/$n.log")
  t0=$SECONDS
  call "$n" PUT /vm/snapshot "{\"dir\":\"$snap\"}"
  if [ "$code" = 200 ] && [ "$(jget "$body" state)" = paused ] && [ "$(jget "$body" dir)" = "$snap" ]; then
    ok "$n: snapshot after TICK ${last[$n]} in $((SECONDS - t0)) s: $body"
  else bad "$n: snapshot: $code $body"; fi
  sleep 1
  [ "$(last_tick "$work/$n.log")" = "${last[$n]}" ] && ok "$n stays paused after the snapshot" || bad "$n ticked on after the snapshot"
  stop "$n"
  size=$(stat -c %s "$snap/memory" 2>/dev/null || echo none)
  alloc=$(du -k "$snap/memory" 2>/dev/null | cut -f1)
  if python3 -m json.tool "$snap/state.json" >/dev/null 2>&1 && [ "$size" = $((128 << 20)) ] && ((${alloc:-131072} < 131072)); then
    ok "$n: the snapshot holds state.json and memory (apparent $size bytes, $alloc KiB allocated)"
  else bad "$n: snapshot files: $(ls -ls "$snap" | tr '\n' ' '), state.json $(head -c 100 "$snap/state.json" 2>&1)"; fi
}
# continues NAME ORIG: NAME, restored from ORIG's snapshot, goes on where ORIG was.
continues() {
  local n=$1 o=$2 log=$work/$1.log first gap sums_seen
  need_tick "$n" 1 120
  first=$(ticks "$log" | head -1)
  need_tick "$n" $((first + 10)) 120
  if grep -aq 'INIT-START\|Linux version' "$log"; then bad "$n booted afresh: $(tr -d '\r' <"$log" | head -3 | tr '\n' ' ')"
  elif ((first < last[$o])); then bad "$n's first tick is $first, ${last[$o]} was seen before the snapshot"
  else ok "$n goes on where $o was: its first tick is $first (last before the snapshot ${last[$o]}), no boot"; fi
  gap=$(ticks "$log" | awk 'NR > 1 && $1 != p + 1 { print p " -> " $1; exit } { p = $1 }')
  [ -z "$gap" ] && ok "$n ticks on: $first to $(last_tick "$log"), none missing" || bad "$n: ticks not consecutive: $gap"
  sums_seen=$(sums "$log" | sort -u | tr '\n' ' ')
  [ "$sums_seen" = "${sum[$o]} " ] && ok "$n: /data intact (md5 ${sum[$o]})" || bad "$n: md5 after restore '$sums_seen', at boot ${sum[$o]}"
}
# describe NAME STATE VCPUS: GET /vm on NAME answers STATE and VCPUS.
describe() {
  call "$1" GET /vm
  if [ "$code" = 200 ] && [ "$(jget "$body" state)" = "$2" ] && [ "$(jget "$body" config.vcpus)" = "$3" ]; then ok "GET /vm on $1: $2, $3 vCPU(s)"
  else bad "GET /vm on $1: want $2 with $3 vCPUs, got $code $(head -c 300 <<<"$body")"; fi
}

# 1.-2. One vCPU: the snapshot, then two VMs from it at the same time.
original o1 1
files_md5=$(cd "$work/o1.snap" && md5sum state.json memory)
vm r1 --restore "$work/o1.snap"
need_tick r1 1 120
describe r1 running 1
vm r2 --restore "$work/o1.snap"
continues r1 o1
continues r2 o1
call r1 PUT /vm/pause
[ "$code" = 200 ] || bad "pause of r1: $code $body"
a=$(last_tick "$work/r1.log") b=$(last_tick "$work/r2.log")
need_tick r2 $((b + 5)) 60
[ "$(last_tick "$work/r1.log")" = "$a" ] && ok "r1 paused at TICK $a while r2 went on ($b -> $(last_tick "$work/r2.log"))" || bad "r1 ticked while paused"
describe r1 paused 1
describe r2 running 1
# shared_kib PID FILE: KiB of FILE's pages that PID maps and shares with another process.
# (Shared_Clean and Shared_Dirty: a file in tmpfs has only dirty pages.)
shared_kib() { awk -v f="$2" '/^[0-9a-f]+-[0-9a-f]+ / { m = ($NF == f) } m && /^Shared_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps"; }
for n in r1 r2; do
  kib=$(shared_kib "${pid[$n]}" "$work/o1.snap/memory")
  if ((kib >= 16384)); then ok "$n maps the snapshot's memory copy-on-write and shares $kib KiB of it (/data is 16 MiB)"
  else bad "$n shares $kib KiB of $work/o1.snap/memory (want >= 16384): $(awk -v f="$work/o1.snap/memory" '/^[0-9a-f]+-[0-9a-f]+ / { m = ($NF == f); if (m) print } m && /^(Rss|Shared|Private|Anon)/' "/proc/${pid[$n]}/smaps" | tr -s ' \n' ' ')"; fi
done
mkdir -p "$work/r1.snap"
expect r1 PUT /vm/snapshot "{\"dir\":\"$work/r1.snap\"}" 409 'copy-on-write' "r1: snapshot of a VM restored copy-on-write refused"
[ -z "$(ls -A "$work/r1.snap")" ] || bad "the refused snapshot of r1 wrote $(ls -A "$work/r1.snap")"
call r1 PUT /vm/resume
[ "$code" = 200 ] || bad "resume of r1: $code $body"
need_tick r1 $((a + 3)) 60
ok "r1 ticks again after the resume"
stop r1
stop r2
[ "$(cd "$work/o1.snap" && md5sum state.json memory)" = "$files_md5" ] && ok "the snapshot's files are unchanged by its restores" || bad "the restores changed the snapshot's files"

# 3. Two vCPUs, restored once.
original o2 2
vm r3 --restore "$work/o2.snap"
continues r3 o2
describe r3 running 2
stop r3

# 4. A boot disk (not saved yet; empty slots are, see test-snapshot-devices.sh): the snapshot
# is refused and the VM goes on.
truncate -s 1M "$work/boot.img"
boot_vm d1 1 --disk "path=$work/boot.img"
need_tick d1 1 180
call d1 PUT /vm/pause
[ "$code" = 200 ] || bad "pause of d1: $code $body"
mkdir "$work/d1.snap"
call d1 PUT /vm/snapshot "{\"dir\":\"$work/d1.snap\"}"
if [ "$code" = 409 ] && grep -qiE 'block|blk|disk' <<<"$body" && [ -z "$(ls -A "$work/d1.snap")" ]; then ok "snapshot of a VM with a boot disk refused: $body"
else bad "snapshot with --disk: want 409 naming the device, dir left empty; got $code $body, dir: $(ls -A "$work/d1.snap")"; fi
a=$(last_tick "$work/d1.log")
call d1 PUT /vm/resume
[ "$code" = 200 ] || bad "resume of d1 after the refusal: $code $body"
need_tick d1 $((a + 3)) 60
ok "d1 ticks on after the refused snapshot"
stop d1

# 5. --restore refusals.
# refuse WHAT TEXT1 TEXT2 ARGS...: husk-vmm ARGS exits non-zero at once, stderr has both texts.
refuse() {
  local what=$1 t1=$2 t2=$3 rc=0 t0=$SECONDS
  shift 3
  timeout -k 5 60 "$VMM" "$@" --console none >"$work/refuse.out" 2>"$work/refuse.err" </dev/null || rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -qF -- "$t1" "$work/refuse.err" && grep -qF -- "$t2" "$work/refuse.err"; then
    ok "$what: exit $rc in $((SECONDS - t0)) s: $(head -c 200 "$work/refuse.err")"
  else bad "$what: exit $rc, want non-zero naming '$t1' and '$t2'; stderr: $(head -c 500 "$work/refuse.err")"; fi
}
mkdir "$work/nostate" "$work/corrupt"
echo '{"vcpus": 1, garbage' >"$work/corrupt/state.json"
truncate -s 128M "$work/corrupt/memory"
refuse "--restore of a missing dir" "$work/missing" "$work/missing" --restore "$work/missing"
refuse "--restore of a dir without state.json" "$work/nostate" state.json --restore "$work/nostate"
refuse "--restore of a corrupt state.json" "$work/corrupt" state.json --restore "$work/corrupt"
refuse "--restore with --kernel" --kernel --kernel --restore "$work/o1.snap" --kernel "$KDIR/vmlinux"

# 6. Nothing left behind.
left=$(pgrep -f -- "husk-vmm.*$work/" | tr '\n' ' ')
[ -z "$left" ] && ok "no husk-vmm of this test left" || bad "husk-vmm processes left: $left"
socks=$(find "$work" -name '*.sock' | tr '\n' ' ')
[ -z "$socks" ] && ok "no API socket left" || bad "API sockets left: $socks"
finish
