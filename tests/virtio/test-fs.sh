#!/usr/bin/env bash
# virtio-fs end to end: two upstream virtiofsd (sandboxed: --sandbox namespace, --seccomp
# kill) share a read-write and a read-only host directory with one husk-vmm guest, which
#   - mounts both tags and reads a host file,
#   - writes a file the host then reads (after the guest's sync),
#   - creates and removes 100 files (the host sees them come and go),
#   - sees host-side changes: a rewritten file, and a ConfigMap-style update the way kubelet
#     makes it (`key -> ..data/key`, `..data -> ..2026_<old>`; the new ..2026_<new> dir is
#     written, a `..data_tmp` symlink to it renamed over `..data` in one step, the old dir
#     removed), each within the cache's 1 s revalidation (the guest polls for at most 10 s),
#   - cannot write to the read-only share (virtiofsd --readonly: EROFS) while reading works,
#     nor into a read-only bind mount inside the read-write share, made after virtiofsd
#     started, the way the shim's sharedfs::SharedDir exposes volumes: the share is a shared
#     mount, so a mount made under it propagates into virtiofsd's mount namespace; a
#     read-only remount does not propagate, so the bind mount is made and remounted
#     read-only in a private staging directory first, then moved under the share (the copy
#     virtiofsd gets is read-only too),
#   - gets I/O errors once the read-write share's virtiofsd is killed, while the read-only
#     share keeps working and husk-vmm keeps running (its API answers; counters say what
#     happened: the live share's calls reach KVM as irqfds, the lost one's came back to
#     the event loop) and exits 0 at the guest's power-off.
# Then nothing is left: no virtiofsd process, no socket.
# Guest and host take turns: the guest prints HUSK-AT-<n> and waits on vsock port 500<n>; the
# host acts, then connects to that port.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
VIRTIOFSD=${HUSK_VIRTIOFSD:-/usr/local/libexec/husk/virtiofsd}
[ -x "$VIRTIOFSD" ] || { echo "FAIL: no virtiofsd at $VIRTIOFSD (make deps)"; exit 1; }
[ -x "$VSOCK_TOOL" ] || { echo "FAIL: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
rw=$work/rw ro=$work/ro
mkdir -p "$rw/many" "$ro" "$rw/cm/..2026_01_01_00_00_00.000000001"
echo "hello from the host" >"$rw/hello.txt"
echo "read-only content" >"$ro/ro.txt"
# A ConfigMap volume as kubelet lays it out.
echo "value-1" >"$rw/cm/..2026_01_01_00_00_00.000000001/key"
ln -s ..2026_01_01_00_00_00.000000001 "$rw/cm/..data"
ln -s ..data/key "$rw/cm/key"
mkdir -p "$work/vol-src" && echo "volume data" >"$work/vol-src/data.txt"
vfs_pids=()
cleanup_fs() {
  for p in "${vfs_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  umount -R -l "$rw" 2>/dev/null
  umount -R -l "$work/staging" 2>/dev/null
  cleanup_vmm
}
trap cleanup_fs EXIT
# start_virtiofsd SOCKET DIR [extra flags]: one sandboxed virtiofsd; waits for its socket.
start_virtiofsd() {
  local sock=$1 dir=$2
  shift 2
  "$VIRTIOFSD" --socket-path "$sock" --shared-dir "$dir" --sandbox namespace --seccomp kill \
    --cache auto --log-level warn "$@" 2>>"$work/virtiofsd.err" &
  vfs_pids+=($!)
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.1; done
  echo "FAIL: virtiofsd did not create $sock: $(tail -3 "$work/virtiofsd.err")"
  exit 1
}
# As the shim does: the share is a shared mount, so what is mounted under it later
# propagates into virtiofsd's namespace.
mount --bind "$rw" "$rw" && mount --make-shared "$rw" || { echo "FAIL: cannot make $rw a shared mount"; exit 1; }
start_virtiofsd "$work/rw.sock" "$rw"
rw_pid=${vfs_pids[0]}
mkdir -p "$work/staging/vol" "$rw/vol" && mount --bind "$work/staging" "$work/staging" && mount --make-private "$work/staging" \
  && mount --bind "$work/vol-src" "$work/staging/vol" && mount --make-rprivate "$work/staging/vol" \
  && mount -o remount,bind,ro "$work/staging/vol" && mount --move "$work/staging/vol" "$rw/vol" \
  || { echo "FAIL: cannot bind-mount the volume read-only"; exit 1; }
start_virtiofsd "$work/ro.sock" "$ro" --readonly
ok "two virtiofsd started (namespace sandbox, seccomp kill)"

mkinit_x fs "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs share /mnt/rw && mount -t virtiofs rodata /mnt/ro && echo HUSK-MOUNTED \$(grep -c virtiofs /proc/mounts)
echo \"HUSK-READ \$(cat /mnt/rw/hello.txt)\"
echo guest-wrote-this >/mnt/rw/from-guest.txt && sync && echo HUSK-WROTE
i=0; while [ \$i -lt 100 ]; do echo \$i >/mnt/rw/many/f\$i || break; i=\$((i + 1)); done
echo \"HUSK-CREATED \$(ls /mnt/rw/many | wc -l) sum=\$(cat /mnt/rw/many/f* | awk '{s+=\$1} END {print s}')\"
echo HUSK-AT-1; vsock-tool wait 5001
rm /mnt/rw/many/f*; echo \"HUSK-REMOVED left=\$(ls /mnt/rw/many | wc -l)\"
echo \"HUSK-RO-READ \$(cat /mnt/ro/ro.txt)\"
msg=\$(echo x 2>&1 >/mnt/ro/new.txt); echo \"HUSK-RO-WRITE rc=\$? \$msg\"
msg=\$(rm /mnt/ro/ro.txt 2>&1); echo \"HUSK-RO-RM rc=\$? \$msg\"
echo \"HUSK-VOL-READ \$(cat /mnt/rw/vol/data.txt)\"
msg=\$(echo x 2>&1 >/mnt/rw/vol/new.txt); echo \"HUSK-VOL-WRITE rc=\$? \$msg\"
echo \"HUSK-CM-BEFORE \$(cat /mnt/rw/cm/key)\"
echo HUSK-AT-2; vsock-tool wait 5002
# poll NAME FILE WANT: until FILE reads WANT (10 s at most); prints the tenths of a second.
poll() { n=0; while [ \"\$(cat \$2 2>/dev/null)\" != \"\$3\" ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done; echo \"HUSK-\$1 \$(cat \$2) after=\$n\"; }
poll CHANGED /mnt/rw/hello.txt 'changed by the host'
poll CM-AFTER /mnt/rw/cm/key value-2
echo \"HUSK-CM-OLD \$(ls -a /mnt/rw/cm | grep -c 2026_01_01)\"
echo HUSK-AT-3; vsock-tool wait 5003
msg=\$(cat /mnt/rw/hello.txt 2>&1); echo \"HUSK-KILLED-CAT rc=\$? \$msg\"
msg=\$(ls /mnt/rw 2>&1); echo \"HUSK-KILLED-LS rc=\$? \$msg\"
msg=\$(echo x 2>&1 >/mnt/rw/after-kill.txt); echo \"HUSK-KILLED-WRITE rc=\$? \$msg\"
echo \"HUSK-RO-STILL \$(cat /mnt/ro/ro.txt)\"
echo HUSK-AT-4; vsock-tool wait 5004
poweroff -f" "$VSOCK_TOOL:/bin/vsock-tool"
start_vm fs "$work/fs.cpio.gz" --fs "tag=share,socket=$work/rw.sock" --fs "tag=rodata,socket=$work/ro.sock" \
  --vsock "cid=3,uds=$work/v.sock" --api-sock "$work/api.sock"
out() { tr -d '\r' <"$work/fs.out"; }
line() { out | grep -a "^$1" | head -1; }
# at N: waits for the guest's HUSK-AT-N (300 s at most); false if the VM is gone.
at() {
  for ((i = 0; i < 3000; i++)); do
    out | grep -aq "^HUSK-AT-$1\$" && return 0
    kill -0 "$vmm_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
go() { timeout -k 5 90 python3 "$vdir/vsock_host.py" poke "$work/v.sock" "500$1" >/dev/null 2>&1; }

if at 1; then
  [ "$(line HUSK-MOUNTED)" = "HUSK-MOUNTED 2" ] && ok "guest mounted both tags" || bad "mount: $(line HUSK-MOUNTED)"
  [ "$(line HUSK-READ)" = "HUSK-READ hello from the host" ] && ok "guest read a host file" || bad "read: '$(line HUSK-READ)'"
  if [ -n "$(line HUSK-WROTE)" ] && [ "$(cat "$rw/from-guest.txt" 2>/dev/null)" = guest-wrote-this ]; then ok "host reads the file the guest wrote"
  else bad "guest write: '$(line HUSK-WROTE)', host sees '$(cat "$rw/from-guest.txt" 2>&1)'"; fi
  n=$(ls "$rw/many" | wc -l)
  if [ "$(line HUSK-CREATED)" = "HUSK-CREATED 100 sum=4950" ] && [ "$n" = 100 ] && [ "$(cat "$rw/many/f42")" = 42 ]; then
    ok "guest created 100 files, the host sees all 100"
  else bad "create: '$(line HUSK-CREATED)', host sees $n files"; fi
  go 1
else bad "guest never reached step 1"; fi

if at 2; then
  n=$(ls "$rw/many" | wc -l)
  [ "$(line HUSK-REMOVED)" = "HUSK-REMOVED left=0" ] && [ "$n" = 0 ] && ok "guest removed them, the host sees none" \
    || bad "remove: '$(line HUSK-REMOVED)', host sees $n files"
  [ "$(line HUSK-RO-READ)" = "HUSK-RO-READ read-only content" ] && ok "read-only share is readable" || bad "ro read: '$(line HUSK-RO-READ)'"
  if [[ "$(line HUSK-RO-WRITE)" == *"Read-only file system"* && "$(line HUSK-RO-RM)" == *"Read-only file system"* ]] \
     && [ ! -e "$ro/new.txt" ] && [ -f "$ro/ro.txt" ]; then ok "read-only share refuses create and unlink (EROFS), host dir untouched"
  else bad "ro write: '$(line HUSK-RO-WRITE)' / '$(line HUSK-RO-RM)'; $(ls "$ro")"; fi
  if [ "$(line HUSK-VOL-READ)" = "HUSK-VOL-READ volume data" ] && [[ "$(line HUSK-VOL-WRITE)" == *"Read-only file system"* ]] \
     && [ ! -e "$work/vol-src/new.txt" ]; then ok "read-only bind mount made under the share after virtiofsd started: readable, refuses writes"
  else bad "volume: '$(line HUSK-VOL-READ)' '$(line HUSK-VOL-WRITE)'"; fi
  [ "$(line HUSK-CM-BEFORE)" = "HUSK-CM-BEFORE value-1" ] && ok "guest reads the ConfigMap key through ..data" || bad "cm: '$(line HUSK-CM-BEFORE)'"
  # The host's changes: a rewritten file, and kubelet's atomic ConfigMap update.
  echo "changed by the host" >"$rw/hello.txt"
  new=..2026_02_02_00_00_00.000000002
  mkdir "$rw/cm/$new" && echo value-2 >"$rw/cm/$new/key"
  ln -s "$new" "$rw/cm/..data_tmp" && mv -T "$rw/cm/..data_tmp" "$rw/cm/..data"
  rm -rf "$rw/cm/..2026_01_01_00_00_00.000000001"
  go 2
else bad "guest never reached step 2"; fi

if at 3; then
  c=$(line HUSK-CHANGED) m=$(line HUSK-CM-AFTER)
  if [[ "$c" =~ ^"HUSK-CHANGED changed by the host after="([0-9]+)$ ]]; then ok "guest sees the host's rewrite ($((BASH_REMATCH[1] * 100)) ms)"
  else bad "host change not seen: '$c'"; fi
  if [[ "$m" =~ ^"HUSK-CM-AFTER value-2 after="([0-9]+)$ ]] && [ "$(line HUSK-CM-OLD)" = "HUSK-CM-OLD 0" ]; then
    ok "guest sees the atomic ..data symlink swap ($((BASH_REMATCH[1] * 100)) ms), the old version is gone"
  else bad "ConfigMap update: '$m' '$(line HUSK-CM-OLD)'"; fi
  kill -KILL "$rw_pid"
  wait "$rw_pid" 2>/dev/null
  go 3
else bad "guest never reached step 3"; fi

if at 4; then
  eio() { [[ "$(line "$1")" == "$1 rc=1 "*"I/O error"* || "$(line "$1")" == "$1 rc=1 "*"Input/output error"* ]]; }
  if eio HUSK-KILLED-CAT && eio HUSK-KILLED-LS && eio HUSK-KILLED-WRITE; then ok "with its virtiofsd killed, the guest gets I/O errors (open, readdir, create)"
  else bad "after kill: '$(line HUSK-KILLED-CAT)' '$(line HUSK-KILLED-LS)' '$(line HUSK-KILLED-WRITE)'"; fi
  [ "$(line HUSK-RO-STILL)" = "HUSK-RO-STILL read-only content" ] && ok "the other share still works" || bad "ro after kill: '$(line HUSK-RO-STILL)'"
  if counts=$(curl -s --max-time 20 --unix-socket "$work/api.sock" http://localhost/vm/counters | python3 -c '
import json, sys
c = json.load(sys.stdin)
rw, ro = c["fs.share"], c["fs.rodata"]
want = {"rw lost its backend once": rw["backend_failures"] == 1 and rw["connected"] == 0,
        "rw answered requests with EIO": rw["failed_requests"] >= 3,
        "rw was activated once": rw["activations"] == 1,
        "rw calls back on the event loop after the loss": rw["routed_calls"] == 0,
        "ro still connected, no failure": ro["connected"] == 1 and ro["backend_failures"] == 0 and ro["failed_requests"] == 0,
        "ro calls raise the interrupt through KVM, not relayed": ro["routed_calls"] == 1 and ro["interrupts"] == 0}
bad = [k for k, v in want.items() if not v]
print(("wrong: " + "; ".join(bad) + " in " if bad else "") + json.dumps({"fs.share": rw, "fs.rodata": ro}))
sys.exit(1 if bad else 0)'); then ok "husk-vmm still answers its API; fs counters tell what happened"
  else bad "counters: ${counts:-no answer}"; fi
  go 4
else bad "guest never reached step 4"; fi

wait_vm 120
if [ "$rc" = 0 ]; then ok "guest powered off, husk-vmm exit 0"; else bad "vmm exit $rc: $(tail -5 "$work/fs.err")"; out | tail -20; fi
n=$(grep -c 'virtio-fs share: the vhost-user backend at .* hung up' "$work/fs.err")
[ "$n" = 1 ] && ok "husk-vmm logged the lost backend once" || bad "log lines about the lost backend: $n; $(tail -5 "$work/fs.err")"
# Nothing left: the read-only virtiofsd ends when its frontend is gone; no sockets remain.
for ((i = 0; i < 100; i++)); do
  left=$(for p in "${vfs_pids[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; pgrep -f "virtiofsd.*$work" || true)
  [ -z "$left" ] && break
  sleep 0.1
done
# virtiofsd leaves its socket file (its sandboxed child unlinks it inside its own mount
# namespace, not ours) and its <socket>.pid lock file: whoever started it removes them, as
# the shim does.
[ -z "$left" ] && rm -f "$work/rw.sock" "$work/ro.sock" "$work/rw.sock.pid" "$work/ro.sock.pid"
socks=$(find "$work" -type s -o -name '*.pid')
umount "$rw/vol" && umount "$rw" && umount "$work/staging" || bad "cannot unmount the test's bind mounts"
m=$(grep -c " $work" /proc/self/mounts)
[ "$m" = 0 ] && ok "no mount left under the test dir" || bad "$m mounts left: $(grep " $work" /proc/self/mounts)"
if [ -z "$left" ] && [ -z "$socks" ]; then ok "no virtiofsd process, socket or pid file left"
else bad "left behind: processes '$left' sockets '$socks'"; fi
[ -s "$work/virtiofsd.err" ] && { echo "virtiofsd said:"; sed 's/^/  /' "$work/virtiofsd.err" | tail -10; }
finish
