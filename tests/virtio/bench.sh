#!/usr/bin/env bash
# Throughput of husk-vmm's virtio devices against QEMU microvm (virtio-mmio) in the same
# testbed run, same kernel, same guest commands:
#   block: sequential read and write of a BENCH_MB image (guest dd, 1 MiB blocks), also
#          host dd on the same file as the ceiling;
#   net:   guest -> host TCP over a tap (BENCH_MB MiB, busybox nc, timed on the host);
#   vsock: host -> guest stream over the hybrid unix socket (husk only: QEMU needs
#          vhost-vsock and a different host API; its figure is printed when available).
# Prints one line per figure and "ratio husk/qemu". Run: tests/testbed/run -- tests/virtio/bench.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${BENCH_MB:-16}
ns=husk-bench-$$
tap=hb$$
cleanup_bench() { ip netns del "$ns" 2>/dev/null; cleanup_vmm; }
trap cleanup_bench EXIT
ip netns add "$ns" && ip netns exec "$ns" ip link set lo up || { echo "bench: cannot create netns"; exit 1; }
mktap() {
  ip netns exec "$ns" ip tuntap add dev "$tap" mode tap vnet_hdr
  ip -n "$ns" addr add 10.0.98.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
}
up() { cut -d' ' -f1 /proc/uptime; }
mkinit_x bench "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
t0=\$(up); dd if=/dev/vda of=/dev/null bs=1048576 2>/dev/null; t1=\$(up)
dd if=/dev/zero of=/dev/vda bs=1048576 count=$MB conv=fsync 2>/dev/null; t2=\$(up)
echo \"HUSK-BENCH blk_read_s=\$(awk \"BEGIN{print \$t1-\$t0}\") blk_write_s=\$(awk \"BEGIN{print \$t2-\$t1}\")\"
ip link set eth0 up && ip addr add 10.0.98.2/24 dev eth0
yes husk-bench | head -c $((MB * 1048576)) | nc 10.0.98.1 7000
if ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | grep -q virtio; then vsock-tool serve 5000 >/dev/null & vsock-tool wait 5099; fi
reboot -f" "$VSOCK_TOOL:/bin/vsock-tool"

# net sink in the namespace: times the transfer from first byte to MB MiB.
sink() {
  ip netns exec "$ns" python3 -c "
import socket,time
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('10.0.98.1',7000)); l.listen(1)
c,_=l.accept(); want=$MB*2**20; got=0; t0=None
while got<want:
    b=c.recv(1<<16)
    if not b: break
    if t0 is None: t0=time.time()
    got+=len(b)
print('net_s=%.2f bytes=%d' % (time.time()-t0, got), flush=True)
" >"$work/sink.$1" 2>&1 &
  for _ in $(seq 300); do ip netns exec "$ns" ss -Hltn | grep -q '10.0.98.1:7000 ' && break; sleep 0.2; done
}
val() { grep -ao "$2=[0-9.]*" "$1" | head -1 | cut -d= -f2; }
mbps() { awk -v s="$1" -v mb="$MB" 'BEGIN{ if (s > 0) printf "%.1f", mb / s; else print "n/a" }'; }

# host ceiling
truncate -s "${MB}M" "$work/host.img"; dd if=/dev/urandom of="$work/host.img" bs=1M count="$MB" conv=notrunc 2>/dev/null
t0=$(up); dd if="$work/host.img" of=/dev/null bs=1M 2>/dev/null; t1=$(up)
dd if=/dev/zero of="$work/host.img" bs=1M count="$MB" conv=fsync,notrunc 2>/dev/null; t2=$(up)
host_r=$(mbps "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')") host_w=$(mbps "$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b-a}')")

echo "bench: host dd read $host_r MiB/s, write $host_w MiB/s"
# husk
mktap; sink husk
cp "$work/host.img" "$work/husk.img"
uds=$work/v.sock
start_vm husk "$work/bench.cpio.gz" --disk "path=$work/husk.img" \
  --net "tap=$tap,netns=/var/run/netns/$ns" --vsock "cid=3,uds=$uds"
for _ in $(seq 600); do grep -q 'HUSK-BENCH' "$work/husk.out" 2>/dev/null && break; sleep 0.2; done
vs=$(timeout 300 python3 "$vdir/vsock_host.py" send "$uds" 5000 $((MB * 1048576)) | grep -o '[0-9.]* MiB/s' | cut -d' ' -f1)
timeout 60 python3 "$vdir/vsock_host.py" poke "$uds" 5099 >/dev/null 2>&1
wait_vm 300
echo "bench: husk run done (exit $rc): $(grep -a HUSK-BENCH "$work/husk.out" | tr -d '\r'); $(cat "$work/sink.husk"); vsock ${vs:-n/a} MiB/s"
ip netns exec "$ns" ip link del "$tap"
wait 2>/dev/null

# QEMU microvm, virtio-mmio
mktap; sink qemu
cp "$work/host.img" "$work/qemu.img"
timeout -k 5 300 ip netns exec "$ns" qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC \
  -m 512 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
  -kernel "$KDIR/bzImage" -initrd "$work/bench.cpio.gz" \
  -append "console=ttyS0 reboot=t panic=-1 lpj=4000000 tsc=reliable quiet" \
  -drive "id=d0,file=$work/qemu.img,format=raw,if=none" -device virtio-blk-device,drive=d0 \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-device,netdev=n0 \
  >"$work/qemu.out" 2>"$work/qemu.err" </dev/null
wait 2>/dev/null
echo "bench: qemu run done: $(grep -a HUSK-BENCH "$work/qemu.out" | tr -d '\r'); $(cat "$work/sink.qemu")"

row() {  # name husk qemu
  local ratio
  ratio=$(awk -v h="$2" -v q="$3" 'BEGIN{ if (q ~ /^[0-9.]+$/ && h ~ /^[0-9.]+$/ && q > 0) printf "%.2f", h / q; else print "n/a" }')
  printf '%-16s husk %8s MiB/s   qemu %8s MiB/s   ratio husk/qemu %s\n' "$1" "$2" "$3" "$ratio"
}
echo "bench: $MB MiB per figure; host dd: read $host_r MiB/s, write $host_w MiB/s"
row "block seq read" "$(mbps "$(val "$work/husk.out" blk_read_s)")" "$(mbps "$(val "$work/qemu.out" blk_read_s)")"
row "block seq write" "$(mbps "$(val "$work/husk.out" blk_write_s)")" "$(mbps "$(val "$work/qemu.out" blk_write_s)")"
row "net tcp g->h" "$(mbps "$(val "$work/sink.husk" net_s)")" "$(mbps "$(val "$work/sink.qemu" net_s)")"
row "vsock h->g" "${vs:-n/a}" "n/a"
grep -q HUSK-BENCH "$work/husk.out" || { echo "bench: husk run produced no figures:"; tail -5 "$work/husk.err"; }
grep -q HUSK-BENCH "$work/qemu.out" || { echo "bench: qemu run produced no figures:"; tail -5 "$work/qemu.err"; }
