#!/usr/bin/env bash
# virtio-net end to end: a tap inside a fresh network namespace (opened by husk-vmm through
# --net ...,netns=), a configured MAC, ping, and HUSK_NET_MB (default 100) MiB over TCP each
# way with CRC-32 checks on both ends.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
BYTES=$(( ${HUSK_NET_MB:-100} * 1048576 ))
[ -x "$VSOCK_TOOL" ] || { echo "no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
ns=husk-virtio-$$
tap=hv$$
sink="" sender=""
cleanup_net() {
  for p in $sink $sender; do kill "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  cleanup_vmm
}
trap cleanup_net EXIT
ip netns add "$ns" || { echo "cannot create netns"; exit 1; }
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip tuntap add dev "$tap" mode tap vnet_hdr || { echo "cannot create tap"; exit 1; }
ip -n "$ns" addr add 10.0.99.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up
# Guest -> host: the guest's `vsock-tool tcp-put` sends the pattern to this sink, which
# replies "<bytes> <crc>". Host -> guest: this sender sends the pattern to the guest's
# `vsock-tool tcp-serve` (retrying until it listens) and checks the reply.
ip netns exec "$ns" python3 "$vdir/vsock_host.py" listen tcp:10.0.99.1:7000 1 >"$work/sink.log" 2>&1 &
sink=$!
for _ in $(seq 300); do
  ip netns exec "$ns" ss -Hltn 2>/dev/null | grep -q "10.0.99.1:7000 " && break; sleep 0.2
done
ip netns exec "$ns" python3 "$vdir/vsock_host.py" send tcp:10.0.99.2 7002 "$BYTES" >"$work/send.log" 2>&1 &
sender=$!
mkinit_x net "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo \"HUSK-MAC \$(cat /sys/class/net/eth0/address)\"
ip link set eth0 up && ip addr add 10.0.99.2/24 dev eth0
ping -c 3 -W 10 10.0.99.1 >/dev/null; echo \"HUSK-PING rc=\$?\"
echo \"HUSK-TX \$(vsock-tool tcp-put 10.0.99.1 7000 $BYTES)\"
vsock-tool tcp-serve 7002 1; echo \"HUSK-RX rc=\$?\"
poweroff -f" "$VSOCK_TOOL:/bin/vsock-tool"
start_vm net "$work/net.cpio.gz" --net "tap=$tap,mac=02:00:00:aa:bb:cc,netns=/var/run/netns/$ns"
wait_vm 600
# The sender is done once the guest served it; if the guest never did, it would retry on.
for _ in $(seq 50); do kill -0 "$sender" 2>/dev/null || break; sleep 0.2; done
kill "$sender" 2>/dev/null
wait "$sender"; send_rc=$?
kill "$sink" 2>/dev/null; wait "$sink" 2>/dev/null
out=$(tr -d '\r' <"$work/net.out")
line() { grep -a "^$1" <<<"$out" | head -1; }
want=$(python3 "$vdir/vsock_host.py" expected "$BYTES")
[ "$(line HUSK-MAC)" = "HUSK-MAC 02:00:00:aa:bb:cc" ] && ok "guest MAC from --net mac=" || bad "mac: '$(line HUSK-MAC)'"
[ "$(line HUSK-PING)" = "HUSK-PING rc=0" ] && ok "guest pings the tap address in the netns" || bad "ping: '$(line HUSK-PING)'"
tx=$(line HUSK-TX)
if [ "$tx" = "HUSK-TX sent ${want#* } reply $want" ]; then ok "guest->host TCP $BYTES bytes, CRC matches on both sides"
else bad "guest->host TCP: '$tx', want reply '$want'; sink: $(tail -2 "$work/sink.log")"; fi
if [ "$send_rc" = 0 ]; then ok "host->guest TCP $BYTES bytes, CRC matches ($(cat "$work/send.log"))"
else bad "host->guest TCP: $(cat "$work/send.log"); guest: '$(line HUSK-RX)'"; fi
if [ "$rc" = 0 ]; then ok "guest powered off, exit 0"; else bad "vmm exit $rc: $(tail -5 "$work/net.err")"; tail -20 "$work/net.out"; fi
if ip netns exec "$ns" ip link show "$tap" >/dev/null 2>&1; then ok "pre-created tap still there (not ours to delete)"
else bad "husk-vmm deleted the pre-created tap $tap in netns $ns"; fi
finish
