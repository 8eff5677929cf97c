#!/usr/bin/env bash
# Snapshots of a VM with a virtio-net device, restored onto another tap (a pod template: booted
# once on a throwaway tap, each clone on its pod's tap).
#  1. In a fresh network namespace, tap A has 10.0.98.1/24. The guest (busybox init) sets
#     10.0.98.2/24 on eth0 (MAC 02:00:00:98:00:02), serves its boot id over HTTP on port 8080
#     and ticks every second, pinging the host: TICK n NET up|down. The host pings it and
#     fetches the boot id. While the host pings it every 0.2 s, the VM is paused and
#     snapshotted (200); paused, its device delivers none of those pings (rx_frames stays:
#     the hold after a snapshot); resumed, it answers pings again (the hold ends when the
#     guest runs). The VM is killed, tap A deleted, tap B made with the same
#     address.
#  2. --restore DIR --net tap=B,netns=...: the guest goes on (no READY, its first tick not
#     below the last one before the snapshot, ticks continue), answers pings through tap B
#     with the saved MAC, serves the same boot id over TCP, and reaches the host itself
#     (TICK n NET up).
#  3. The same with the tap opened by the parent and inherited: --net tap=B,fd=7.
#  4. --restore with two --net for the one saved net device is refused naming both counts;
#     no tap of that flag is made.
#  5. Nothing left: no husk-vmm of this test, tap B still there until the test removes it
#     (husk-vmm deletes no pre-created tap), then no namespace and no tap of the test.
set -uo pipefail
# shellcheck source=tests/vmm/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/vmm/snapshot-lib.sh
. "$(dirname "$0")/snapshot-lib.sh"
for t in curl python3 ip busybox; do command -v "$t" >/dev/null || { echo "test-snapshot-net: $t missing (make deps)" >&2; exit 1; }; done
ns=husk-snapnet-$$
tapa=hsa$$ tapb=hsb$$ tapc=hsc$$
netns=/var/run/netns/$ns
mac=02:00:00:98:00:02
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
nsx() { ip netns exec "$ns" "$@"; }

# mktap NAME: a persistent tap with a virtio-net header in the namespace, 10.0.98.1/24, up.
mktap() {
  nsx ip tuntap add dev "$1" mode tap vnet_hdr && nsx ip addr add 10.0.98.1/24 dev "$1" && nsx ip link set "$1" up
}
ip netns add "$ns" || { echo "test-snapshot-net: cannot create a network namespace" >&2; exit 1; }
nsx ip link set lo up
mktap "$tapa" || { echo "test-snapshot-net: cannot create tap $tapa" >&2; exit 1; }

printf '#!/bin/sh\n%s\n' 'mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set eth0 up && ip addr add 10.0.98.2/24 dev eth0
mkdir -p /www && cat /proc/sys/kernel/random/boot_id >/www/index.html
httpd -p 8080 -h /www
echo "READY $(cat /sys/class/net/eth0/address) $(cat /www/index.html)"
n=0
while :; do
  n=$((n + 1))
  if ping -c 1 -W 1 10.0.98.1 >/dev/null 2>&1; then s=up; else s=down; fi
  echo "TICK $n NET $s"
  sleep 1
done' >"$work/init.sh"
chmod 755 "$work/init.sh"
"$repo/tests/testbed/mkinitramfs.sh" "$work/guest.cpio.gz" "$work/init.sh" || exit 1

# The parent's side of --net fd=: opens tap NAME (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as
# descriptor N and executes the rest of the arguments, as the shim hands a pod's tap over.
cat >"$work/tapfd.py" <<'EOF'
import fcntl, os, struct, sys
name, n = sys.argv[1], int(sys.argv[2])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x0002 | 0x1000 | 0x4000))
if fd != n:
    os.dup2(fd, n)
    os.close(fd)
os.set_inheritable(n, True)
os.execv(sys.argv[3], sys.argv[3:])
EOF

# wait_for NAME REGEX SECS: until NAME's console has a line matching REGEX (else FAIL, 1).
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    tr -d '\r' <"$work/$1.log" 2>/dev/null | grep -aqE "$2" && return 0
    sleep 0.1
  done
  bad "$1: no console line matching '$2' within $3 s (last: $(tail -c 300 "$work/$1.log" 2>/dev/null | tr '\r\n' ' |'))"
  return 1
}
fatal() { finish; exit 1; }
last_tick() { tr -d '\r' <"$work/$1.log" | sed -n 's/^TICK \([0-9][0-9]*\) NET [a-z]*$/\1/p' | tail -1; }
first_tick() { tr -d '\r' <"$work/$1.log" | sed -n 's/^TICK \([0-9][0-9]*\) NET [a-z]*$/\1/p' | head -1; }
# pings WHAT SECS: the guest answers the host's ping within SECS.
pings() {
  local end=$((SECONDS + $2))
  while ((SECONDS < end)); do
    nsx busybox ping -c 1 -W 2 10.0.98.2 >/dev/null 2>&1 && { ok "$1: the guest answers ping"; return 0; }
    sleep 1
  done
  bad "$1: no ping answer within $2 s"
  return 1
}
# served WHAT: the guest's HTTP server answers with the boot id it had before the snapshot.
served() {
  local got
  got=$(nsx curl -sS --max-time 60 --retry 3 --retry-connrefused http://10.0.98.2:8080/ 2>&1)
  [ "$got" = "$bootid" ] && ok "$1: TCP to the guest serves its boot id $got" || bad "$1: HTTP answer '$got', want '$bootid'"
}
# restored_checks NAME: NAME goes on from the snapshot and its network works through tap B.
restored_checks() {
  local n=$1 first neigh
  wait_for "$n" '^TICK [0-9]+ NET' 180 || return 1
  tr -d '\r' <"$work/$n.log" | grep -aq '^READY' && bad "$n booted again (READY on its console)" || ok "$n continues without a boot"
  first=$(first_tick "$n")
  ((first >= before)) && ok "$n: first tick $first, the last before the snapshot was $before" || bad "$n: first tick $first below $before"
  pings "$n through $tapb" 60
  neigh=$(nsx ip neigh show 10.0.98.2 dev "$tapb")
  grep -q "$mac" <<<"$neigh" && ok "$n kept the saved MAC ($neigh)" || bad "$n: neighbour entry '$neigh', want $mac"
  served "$n"
  local now
  now=$(last_tick "$n")
  wait_for "$n" "^TICK [0-9]+ NET up" 60 && ok "$n reaches the host itself (guest-side ping)"
  wait_for "$n" "^TICK $((now + 3)) NET" 60 && ok "$n ticks on ($((now + 3)))"
}

# 1. Boot on tap A, use the network, snapshot under traffic, resume, kill.
vm o --kernel "$KDIR/vmlinux" --initrd "$work/guest.cpio.gz" --vcpus 1 --memory 128M --cmdline "$CMDLINE" \
  --net "tap=$tapa,mac=$mac,netns=$netns"
wait_for o '^READY' 180 || fatal
bootid=$(tr -d '\r' <"$work/o.log" | sed -n 's/^READY [0-9a-f:]* //p' | head -1)
grep -aq "^READY $mac " <(tr -d '\r' <"$work/o.log") && ok "guest up with MAC $mac, boot id $bootid" || bad "READY line: $(grep -a READY "$work/o.log")"
pings "o through $tapa" 120 || fatal
served "o"
wait_for o '^TICK [0-9]+ NET up' 60 || fatal
nsx busybox ping -i 0.2 -c 300 10.0.98.2 >/dev/null 2>&1 &
load=$!
pids+=("$load")
sleep 1
call o PUT /vm/pause
[ "$code" = 200 ] || bad "pause: $code $body"
before=$(last_tick o)
mkdir "$work/snap"
call o PUT /vm/snapshot "{\"dir\":\"$work/snap\"}"
[ "$code" = 200 ] && ok "snapshot with a net device, pinged meanwhile: $body" || { bad "snapshot: $code $body"; fatal; }
# Paused after the snapshot, the device delivers none of the pings arriving meanwhile.
rx() { call o GET /vm/counters; python3 -c 'import json, sys; print(json.loads(sys.argv[1])["net." + sys.argv[2]]["rx_frames"])' "$body" "$tapa" 2>/dev/null; }
rx1=$(rx)
sleep 2
rx2=$(rx)
[ -n "$rx1" ] && [ "$rx1" = "$rx2" ] && ok "held after the snapshot: rx_frames stays $rx1 while pings arrive" || bad "rx_frames after the snapshot: '$rx1', 2 s later '$rx2'"
call o PUT /vm/resume
[ "$code" = 200 ] || bad "resume: $code $body"
kill "$load" 2>/dev/null
wait "$load" 2>/dev/null
pings "o resumed after the snapshot" 60
served "o resumed"
kill_vm o
nsx ip link del "$tapa" && ok "tap $tapa deleted" || bad "cannot delete tap $tapa"
mktap "$tapb" || { bad "cannot create tap $tapb"; fatal; }

# 2. Restore onto tap B, opened by name in the namespace.
vm r --restore "$work/snap" --net "tap=$tapb,netns=$netns"
restored_checks r
call r GET /vm/counters
grep -q "\"net.$tapb\"" <<<"$body" && ok "counters under the new tap's name" || bad "counters: $code $body"
kill_vm r

# 3. Restore onto tap B inherited as descriptor 7.
nsx python3 "$work/tapfd.py" "$tapb" 7 "$VMM" --restore "$work/snap" --net "tap=$tapb,fd=7" \
  --console "file:$work/f.log" --api-sock "$work/f.sock" 2>"$work/f.err" &
pids+=($!)
pid_f=$!
restored_checks f
kill_vm f

# 4. Another count of --net is refused.
err=$(timeout 60 "$VMM" --restore "$work/snap" --net "tap=$tapb,netns=$netns" --net "tap=$tapc,netns=$netns" --console none 2>&1)
rc=$?
if [ "$rc" -ne 0 ] && grep -q '2 --net' <<<"$err" && grep -q '1 net devices' <<<"$err"; then ok "restore with 2 --net for 1 saved net device refused: $err"
else bad "restore with 2 --net: rc $rc, '$err'"; fi
nsx ip link show "$tapc" >/dev/null 2>&1 && bad "the refused restore made tap $tapc" || ok "the refused restore made no tap"

# 5. Nothing left.
[ -z "$(pgrep -f "husk-vmm.*$work/")" ] && ok "no husk-vmm of this test left" || bad "husk-vmm left: $(pgrep -af "husk-vmm.*$work/")"
nsx ip link show "$tapb" >/dev/null 2>&1 && ok "pre-created tap $tapb still there (not husk-vmm's to delete)" || bad "husk-vmm deleted tap $tapb"
ip netns del "$ns"
if ip netns list | grep -qw "$ns" || ip link show "$tapb" >/dev/null 2>&1 || ip link show "$tapa" >/dev/null 2>&1; then bad "namespace or taps left: $(ip netns list | grep -w "$ns") $(ip -br link | grep -E "$tapa|$tapb")"
else ok "no namespace and no tap of this test left"; fi
finish
