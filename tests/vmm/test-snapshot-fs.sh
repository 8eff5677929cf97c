#!/usr/bin/env bash
# Snapshots of a VM with a virtio-fs device, the way a pod template uses them: the template
# boots with a throwaway virtiofsd on an empty directory and is saved before its guest ever
# mounts the share; each clone is restored with its own virtiofsd and mounts that one.
# The guest's /init prints TICK n every 0.5 s and, at the tick the kernel command line names
# (husk_mount_at=N), mounts tag t and prints READ <content of hello.txt>.
#  1. virtiofsd #1 on an empty directory; a VM boots with --fs tag=t (mount at TICK 40) and is
#     paused and snapshotted at TICK 3 (200), then killed with its virtiofsd.
#  2. Two clones at once, each with its own new virtiofsd on a directory of its own: each goes
#     on counting (no boot: no READY line) and at TICK 40 mounts the share and reads ITS
#     backend's hello.txt and writes a file the host then reads (the restored device runs the
#     vhost-user setup with the new backend); the device's counters show one activation. A
#     clone's RAM is the snapshot's memory file mapped copy-on-write, which virtiofsd cannot
#     map: husk-vmm relays (counters `relaying` 1, `relayed_requests` > 0), virtiofsd maps only
#     the relay's 17 MiB of husk-vmm memory, never the clone's RAM, and the memory file is
#     unchanged afterwards.
#  3. A clone whose guest has mounted the share refuses the snapshot: 409 naming virtio-fs and
#     the mount, nothing written; it goes on after a resume and reads the share again.
#  4. --restore with --fs of another tag is refused naming both tags; with a backend socket
#     that does not exist, refused naming the socket.
#  5. Nothing is left: no husk-vmm, no virtiofsd of this test.
set -uo pipefail
# shellcheck source=tests/vmm/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/vmm/snapshot-lib.sh
. "$(dirname "$0")/snapshot-lib.sh"
VIRTIOFSD=${HUSK_VIRTIOFSD:-/usr/local/libexec/husk/virtiofsd}
[ -x "$VIRTIOFSD" ] || { echo "test-snapshot-fs: no virtiofsd at $VIRTIOFSD (make deps)" >&2; exit 1; }
for t in curl python3; do command -v "$t" >/dev/null || { echo "test-snapshot-fs: $t missing (make deps)" >&2; exit 1; }; done
MOUNT_AT=40
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

mkinit ticker 'mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /mnt/s
at=$(sed -n "s/.*husk_mount_at=\([0-9]*\).*/\1/p" /proc/cmdline)
echo READY
n=0
while :; do
  n=$((n + 1))
  echo "TICK $n"
  if [ "$n" = "$at" ]; then
    if mount -t virtiofs t /mnt/s; then echo MOUNTED; echo "READ $(cat /mnt/s/hello.txt 2>&1)"; else echo MOUNT-FAILED; fi
    if seq 1 20000 >/mnt/s/out.txt; then echo "WROTE $(md5sum /mnt/s/out.txt | cut -c1-32)"; fi
  fi
  if [ -e /mnt/s/again ]; then echo "AGAIN $(cat /mnt/s/hello.txt 2>&1)"; fi
  sleep 0.5
done' || exit 1

# start_virtiofsd NAME DIR: virtiofsd serving DIR on $work/NAME.vfs (sandboxed as in
# tests/virtio/test-fs.sh); waits for its socket; its pid in $vfs_NAME.
start_virtiofsd() {
  local sock=$work/$1.vfs
  "$VIRTIOFSD" --socket-path "$sock" --shared-dir "$2" --sandbox namespace --seccomp kill \
    --cache auto --log-level warn 2>>"$work/virtiofsd.err" &
  pids+=($!)
  eval "vfs_$1=$!"
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.1; done
  bad "virtiofsd $1 did not create $sock: $(tail -3 "$work/virtiofsd.err")"
  finish
}
# wait_for NAME REGEX SECS: until NAME's console has a line matching REGEX.
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    tr -d '\r' 2>/dev/null <"$work/$1.log" | grep -aqE "$2" && return 0
    sleep 0.1
  done
  bad "$1: no console line matching '$2' within $3 s (last: $(tail -c 300 "$work/$1.log" 2>/dev/null | tr '\n' '|'); stderr: $(tail -c 300 "$work/$1.err" 2>/dev/null))"
  finish
}
line() { tr -d '\r' <"$work/$1.log" | grep -a "^$2" | head -1; }
last_tick() { tr -d '\r' <"$work/$1.log" | sed -n 's/^TICK \([0-9][0-9]*\)$/\1/p' | tail -1; }
first_tick() { tr -d '\r' <"$work/$1.log" | sed -n 's/^TICK \([0-9][0-9]*\)$/\1/p' | head -1; }
stop_virtiofsd() {
  local p
  p=$(eval echo "\$vfs_$1")
  kill -TERM "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}

# 1. The template: an empty share, saved before the guest mounts it.
mkdir -p "$work/empty" "$work/share-r" "$work/share-s"
echo "hello from clone r's virtiofsd" >"$work/share-r/hello.txt"
echo "hello from clone s's virtiofsd" >"$work/share-s/hello.txt"
start_virtiofsd o "$work/empty"
vm o --kernel "$KDIR/vmlinux" --initrd "$work/ticker.cpio.gz" --vcpus 1 --memory 128M \
  --cmdline "$CMDLINE husk_mount_at=$MOUNT_AT" --fs "tag=t,socket=$work/o.vfs"
wait_for o '^READY' 180
wait_for o '^TICK 3$' 60
call o PUT /vm/pause
[ "$code" = 200 ] || bad "pause: $code $body"
mkdir "$work/snap"
call o PUT /vm/snapshot "{\"dir\":\"$work/snap\"}"
saved=$(last_tick o)
if [ "$code" = 200 ] && [ -z "$(line o MOUNTED)" ]; then ok "snapshot with an unmounted virtio-fs device at TICK $saved: $body"
else bad "snapshot before the mount: $code $body (console: $(line o MOUNTED))"; finish; fi
kill_vm o
stop_virtiofsd o
mem_md5=$(md5sum <"$work/snap/memory")

# 2. Two clones, each with a virtiofsd of its own.
start_virtiofsd r "$work/share-r"
start_virtiofsd s "$work/share-s"
vm r --restore "$work/snap" --fs "tag=t,socket=$work/r.vfs"
vm s --restore "$work/snap" --fs "tag=t,socket=$work/s.vfs"
for c in r s; do
  wait_for "$c" '^TICK [0-9]+$' 120
  first=$(first_tick "$c")
  if [ -z "$(line "$c" READY)" ] && ((first > saved && first <= saved + 2)); then ok "$c continues from TICK $saved without a boot (first TICK $first)"
  else bad "$c: first TICK $first after the snapshot at $saved, READY line: '$(line "$c" READY)'"; fi
done
for c in r s; do
  wait_for "$c" '^(READ|MOUNT-FAILED)' 240
  want="READ hello from clone $c's virtiofsd"
  if [ -n "$(line "$c" MOUNTED)" ] && [ "$(line "$c" READ)" = "$want" ]; then ok "$c mounted at TICK $MOUNT_AT and read its own backend's file: $(line "$c" READ)"
  else bad "$c: want '$want', got '$(line "$c" MOUNT)' '$(line "$c" READ)' (stderr: $(tail -c 300 "$work/$c.err"))"; fi
done
want=$(seq 1 20000 | md5sum | cut -c1-32)
for c in r s; do
  wait_for "$c" '^WROTE' 60
  got=$(md5sum <"$work/share-$c/out.txt" | cut -c1-32)
  [ "$(line "$c" WROTE)" = "WROTE $want" ] && [ "$got" = "$want" ] && ok "$c wrote 105 KiB through its share, the host reads the same (md5 $got)" \
    || bad "$c's write: guest '$(line "$c" WROTE)', host $got, want $want"
done
call r GET /vm/counters
act=$(python3 -c 'import json, sys; c = json.loads(sys.argv[1])["fs.t"]; print(c["activations"], c["connected"], c["backend_failures"], c["relaying"], int(c["relayed_requests"] > 0), c["errors"])' "$body" 2>/dev/null)
[ "$act" = "1 1 0 1 1 0" ] && ok "r's fs.t counters: one activation, connected, no failure, relaying, requests relayed, no error" || bad "r's counters (want 1 1 0 1 1 0, got '$act'): $code $body"
# What r's virtiofsd (the process started and its sandboxed server) maps of husk-vmm's
# memory: the relay's memfd (17 MiB + 64 KiB), never guest RAM or the snapshot's memory file.
vmaps=$(for p in $vfs_r $(pgrep -P "$vfs_r"); do cat "/proc/$p/maps"; done)
relay_kib=0
while read -r range _; do relay_kib=$((relay_kib + (16#${range#*-} - 16#${range%-*}) / 1024)); done < <(grep '/memfd:husk-fs-relay' <<<"$vmaps")
if [ "$relay_kib" = 17472 ] && ! grep -q -e '/memfd:husk-guest-ram' -e "$work/snap/memory" <<<"$vmaps"; then
  ok "r's virtiofsd maps the relay's $relay_kib KiB of husk-vmm memory and none of the clone's RAM"
else bad "r's virtiofsd maps: relay $relay_kib KiB (want 17472); guest RAM or memory file: $(grep -e '/memfd:' -e "$work/snap/memory" <<<"$vmaps" | tr '\n' '|')"; fi
# Both clones map the memory file copy-on-write and share its pages that neither wrote.
shared_kib() { awk -v f="$2" '/^[0-9a-f]+-[0-9a-f]+ / { m = ($NF == f) } m && /^Shared_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps"; }
kib=$(shared_kib "$pid_r" "$work/snap/memory")
((kib >= 4096)) && ok "r shares $kib KiB of the snapshot's memory file with s" || bad "r shares $kib KiB of $work/snap/memory (want >= 4096)"
n=$(last_tick s)
wait_for s "^TICK $((n + 2))$" 60
ok "s ticks on after the mount"
kill_vm s
stop_virtiofsd s

# 3. A guest that mounted the share: the snapshot is refused, the VM goes on.
call r PUT /vm/pause
mkdir "$work/snap2"
call r PUT /vm/snapshot "{\"dir\":\"$work/snap2\"}"
if [ "$code" = 409 ] && grep -q 'virtio-fs t has been used by the guest (mounted?)' <<<"$body" && [ -z "$(ls -A "$work/snap2")" ]; then
  ok "a mounted share refuses the snapshot, nothing written: $body"
else bad "snapshot after the mount: want 409 naming virtio-fs, nothing written; got $code $body, dir: $(ls -A "$work/snap2")"; fi
call r PUT /vm/resume
[ "$code" = 200 ] || bad "resume: $code $body"
touch "$work/share-r/again"
wait_for r "^AGAIN hello from clone r's virtiofsd" 60
ok "r reads its share on after the refused snapshot"
kill_vm r
stop_virtiofsd r

# 4. Bad --fs on restore.
if err=$("$VMM" --restore "$work/snap" --fs "tag=other,socket=$work/x.vfs" --console none 2>&1); then bad "restore with tag=other started: $err"
elif grep -q 'tag=other' <<<"$err" && grep -q 'tag t' <<<"$err"; then ok "restore with another tag refused: $err"
else bad "restore with tag=other: $err"; fi
if err=$("$VMM" --restore "$work/snap" --fs "tag=t,socket=$work/nobody.vfs" --console none 2>&1); then bad "restore without a backend started: $err"
elif grep -q "fs.socket = \"$work/nobody.vfs\"" <<<"$err"; then ok "restore without its backend refused: $err"
else bad "restore with a missing backend: $err"; fi

[ "$(md5sum <"$work/snap/memory")" = "$mem_md5" ] && ok "the snapshot's memory file is unchanged by its clones" || bad "the clones changed $work/snap/memory"

# 5. Nothing left.
[ -z "$(pgrep -f "husk-vmm.*$work/")" ] && ok "no husk-vmm of this test left" || bad "husk-vmm left: $(pgrep -af "husk-vmm.*$work/")"
[ -z "$(pgrep -f "virtiofsd.*$work/")" ] && ok "no virtiofsd of this test left" || bad "virtiofsd left: $(pgrep -af "virtiofsd.*$work/")"
finish
