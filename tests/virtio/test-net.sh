#!/usr/bin/env bash
# virtio-net end to end: a tap inside a fresh network namespace (opened by husk-vmm through
# --net ...,netns=), a configured MAC, ping, and a TCP transfer each way with md5 checks.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
KB=${HUSK_NET_KB:-2048}
ns=husk-virtio-$$
tap=hv$$
cleanup_net() {
  ip netns del "$ns" 2>/dev/null
  cleanup_vmm
}
trap cleanup_net EXIT
ip netns add "$ns" || { echo "cannot create netns"; exit 1; }
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip tuntap add dev "$tap" mode tap vnet_hdr || { echo "cannot create tap"; exit 1; }
ip -n "$ns" addr add 10.0.99.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up
yes husk-net-tx | head -c $((KB * 1024)) >"$work/tx.want"
mkdir -p "$work/www"
python3 -c "import os,sys; sys.stdout.buffer.write(os.urandom($KB*1024))" >"$work/www/rx.bin"
# Upload sink: reads exactly KB KiB, stores it, closes.
ip netns exec "$ns" python3 -c "
import socket,sys
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('10.0.99.1',7000)); l.listen(1)
c,_=l.accept(); want=$KB*1024; got=b''
while len(got)<want:
    b=c.recv(65536)
    if not b: break
    got+=b
open('$work/tx.got','wb').write(got); c.close()
" &
sink=$!
ip netns exec "$ns" python3 -m http.server 7001 --bind 10.0.99.1 --directory "$work/www" >/dev/null 2>&1 &
web=$!
for _ in $(seq 300); do
  n=$(ip netns exec "$ns" ss -Hltn 2>/dev/null | grep -cE "10.0.99.1:700[01] ")
  [ "$n" = 2 ] && break; sleep 0.2
done
mkinit_x net "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo \"HUSK-MAC \$(cat /sys/class/net/eth0/address)\"
ip link set eth0 up && ip addr add 10.0.99.2/24 dev eth0
ping -c 3 -W 10 10.0.99.1 >/dev/null; echo \"HUSK-PING rc=\$?\"
yes husk-net-tx | head -c $((KB * 1024)) | nc 10.0.99.1 7000; echo \"HUSK-TX rc=\$?\"
echo \"HUSK-RX \$(wget -q -O - http://10.0.99.1:7001/rx.bin | md5sum | cut -d' ' -f1)\"
poweroff -f"
start_vm net "$work/net.cpio.gz" --net "tap=$tap,mac=02:00:00:aa:bb:cc,netns=/var/run/netns/$ns"
wait_vm 300
kill "$web" 2>/dev/null; wait "$web" 2>/dev/null
kill "$sink" 2>/dev/null; wait "$sink" 2>/dev/null
out=$(tr -d '\r' <"$work/net.out")
line() { grep -a "^$1" <<<"$out" | head -1; }
[ "$(line HUSK-MAC)" = "HUSK-MAC 02:00:00:aa:bb:cc" ] && ok "guest MAC from --net mac=" || bad "mac: '$(line HUSK-MAC)'"
[ "$(line HUSK-PING)" = "HUSK-PING rc=0" ] && ok "guest pings the tap address in the netns" || bad "ping: '$(line HUSK-PING)'"
if [ -f "$work/tx.got" ] && cmp -s "$work/tx.got" "$work/tx.want"; then ok "guest->host TCP ${KB} KiB, content matches"
else bad "guest->host TCP: $(line HUSK-TX), got $(stat -c %s "$work/tx.got" 2>/dev/null) bytes"; fi
want_rx=$(md5sum <"$work/www/rx.bin" | cut -d' ' -f1)
[ "$(line HUSK-RX)" = "HUSK-RX $want_rx" ] && ok "host->guest TCP ${KB} KiB (http), md5 matches" || bad "rx: '$(line HUSK-RX)' want $want_rx"
if [ "$rc" = 0 ]; then ok "guest powered off, exit 0"; else bad "vmm exit $rc: $(tail -5 "$work/net.err")"; tail -20 "$work/net.out"; fi
ip netns exec "$ns" ip link show "$tap" >/dev/null 2>&1 && ok "pre-created tap still there (not ours to delete)"
finish
