#!/usr/bin/env bash
# Throughput of husk-vmm's virtio devices against QEMU microvm (virtio-mmio) in the same
# testbed run, same kernel, same guest RAM (256 MiB), same guest commands:
#   block: sequential read and write of a BENCH_MB image (guest dd, 1 MiB blocks, buffered,
#          write with conv=fsync), timed in the guest; host dd on the same file as the ceiling;
#   net:   BENCH_MB over TCP through a tap, guest -> host (guest `vsock-tool tcp-send`, host
#          sink timed from first byte to EOF) and host -> guest (host sends, guest
#          `vsock-tool tcp-sink` replies with the count; timed on the host);
#   vsock: BENCH_MB host -> guest stream to `vsock-tool sink`, timed on the host from connect
#          to the guest's byte-count reply. husk: hybrid unix socket; QEMU: vhost-vsock-device
#          with an AF_VSOCK socket (the in-kernel backend, the strongest QEMU has).
# The guest's receivers do not checksum (correctness is the tests' job), so the guest CPU does
# not cap the figures. Runs alternate husk, QEMU, husk, ... BENCH_REPS times (default 3) and
# each figure is the median; prints "ratio husk/qemu" per figure. Exits non-zero, naming the
# figure, if one is missing.
# Run: tests/testbed/run -- tests/virtio/bench.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${BENCH_MB:-32}
REPS=${BENCH_REPS:-3}
BYTES=$((MB * 1048576))
ns=husk-bench-$$
tap=hb$$
qemu_pid=""
cleanup_bench() {
  [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  cleanup_vmm
}
trap cleanup_bench EXIT
ip netns add "$ns" && ip netns exec "$ns" ip link set lo up || { echo "bench: cannot create netns"; exit 1; }
[ -c /dev/vhost-vsock ] || echo "bench: no /dev/vhost-vsock here: QEMU's vsock figure will be missing"

up() { cut -d' ' -f1 /proc/uptime; }
mkinit_x bench "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
t0=\$(up); dd if=/dev/vda of=/dev/null bs=1048576 2>/dev/null; t1=\$(up)
dd if=/dev/zero of=/dev/vda bs=1048576 count=$MB conv=fsync 2>/dev/null; t2=\$(up)
echo \"HUSK-BENCH blk_read_s=\$(awk \"BEGIN{print \$t1-\$t0}\") blk_write_s=\$(awk \"BEGIN{print \$t2-\$t1}\")\"
ip link set eth0 up && ip addr add 10.0.98.2/24 dev eth0
vsock-tool tcp-sink 7001 >/dev/null &
vsock-tool sink 5000 >/dev/null &
vsock-tool tcp-send 10.0.98.1 7000 $BYTES
vsock-tool wait 5099
reboot -f" "$VSOCK_TOOL:/bin/vsock-tool"

# The guest -> host sink in the namespace: times first byte to EOF, replies with the count.
sink() {
  ip netns exec "$ns" python3 -c "
import socket,time
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('10.0.98.1',7000)); l.listen(1)
c,_=l.accept(); got=0; t0=None
while True:
    b=c.recv(1<<18)
    if not b: break
    if t0 is None: t0=time.time()
    got+=len(b)
dt=time.time()-t0 if t0 else 0
c.sendall(b'%d\n' % got); c.close()
print('net_gh_s=%.3f bytes=%d' % (dt, got), flush=True)
" >"$work/sink.out" 2>&1 &
  sink_pid=$!
  for _ in $(seq 300); do ip netns exec "$ns" ss -Hltn | grep -q '10.0.98.1:7000 ' && return; sleep 0.2; done
}
val() { grep -ao "$2=[0-9.]*" "$1" 2>/dev/null | head -1 | cut -d= -f2; }
mbps() { awk -v s="$1" -v mb="$MB" 'BEGIN{ if (s > 0) printf "%.1f", mb / s; else print "" }'; }
blast_mbps() { sed -n 's/.*(\([0-9.]*\) MiB\/s) reply .*/\1/p' | head -1; }
median() { sort -n | awk '{a[NR]=$1} END { if (NR) print a[int((NR+1)/2)] }'; }

# host ceiling
truncate -s "${MB}M" "$work/host.img"; dd if=/dev/urandom of="$work/host.img" bs=1M count="$MB" conv=notrunc 2>/dev/null
t0=$(up); dd if="$work/host.img" of=/dev/null bs=1M 2>/dev/null; t1=$(up)
dd if=/dev/zero of="$work/host.img" bs=1M count="$MB" conv=fsync,notrunc 2>/dev/null; t2=$(up)
host_r=$(mbps "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')") host_w=$(mbps "$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b-a}')")
echo "bench: host dd read ${host_r:-n/a} MiB/s, write ${host_w:-n/a} MiB/s; $MB MiB per figure, $REPS rounds"

# run_one VMM ROUND: one VM run; appends "figure value" lines to $work/VMM.figs.
run_one() {
  local vmm=$1 r=$2 out="$work/$1.$2.out" vs_target
  ip netns exec "$ns" ip tuntap add dev "$tap" mode tap vnet_hdr
  ip -n "$ns" addr add 10.0.98.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  sink
  cp "$work/host.img" "$work/disk.img"
  if [ "$vmm" = husk ]; then
    vs_target=$work/v.sock
    rm -f "$vs_target"
    start_vm "husk.$r" "$work/bench.cpio.gz" --disk "path=$work/disk.img" \
      --net "tap=$tap,netns=/var/run/netns/$ns" --vsock "cid=3,uds=$vs_target"
  else
    vs_target=vsock:3
    ip netns exec "$ns" qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC \
      -m 256 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
      -kernel "$KDIR/bzImage" -initrd "$work/bench.cpio.gz" -append "$CMDLINE" \
      -drive "id=d0,file=$work/disk.img,format=raw,if=none" -device virtio-blk-device,drive=d0 \
      -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-device,netdev=n0 \
      -device vhost-vsock-device,guest-cid=3 >"$out" 2>"$work/qemu.err" </dev/null &
    qemu_pid=$!
  fi
  local i
  for i in $(seq 600); do grep -q 'HUSK-BENCH' "$out" 2>/dev/null && break; sleep 0.2; done
  for i in $(seq 1500); do [ -s "$work/sink.out" ] && break; sleep 0.2; done
  local hg vs
  hg=$(timeout 300 ip netns exec "$ns" python3 "$vdir/vsock_host.py" blast tcp:10.0.98.2 7001 "$BYTES" | blast_mbps)
  vs=$(timeout 300 python3 "$vdir/vsock_host.py" blast "$vs_target" 5000 "$BYTES" | blast_mbps)
  timeout 60 python3 "$vdir/vsock_host.py" poke "$vs_target" 5099 >/dev/null 2>&1
  if [ "$vmm" = husk ]; then
    wait_vm 120
  else
    for i in $(seq 600); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; qemu_pid=""
  fi
  kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null
  ip netns exec "$ns" ip link del "$tap" 2>/dev/null
  {
    echo "blk_read $(mbps "$(val "$out" blk_read_s)")"
    echo "blk_write $(mbps "$(val "$out" blk_write_s)")"
    echo "net_gh $(mbps "$(val "$work/sink.out" net_gh_s)")"
    echo "net_hg $hg"
    echo "vsock_hg $vs"
  } >>"$work/$vmm.figs"
  echo "bench: round $r $vmm: $(grep -a HUSK-BENCH "$out" | tr -d '\r'); $(cat "$work/sink.out"); tcp h->g ${hg:-n/a} MiB/s; vsock h->g ${vs:-n/a} MiB/s"
  grep -q HUSK-BENCH "$out" || { echo "bench: $vmm round $r gave no block figures:"; tail -5 "$out"; [ -f "$work/qemu.err" ] && tail -3 "$work/qemu.err"; }
  rm -f "$work/sink.out"
}

for r in $(seq 1 "$REPS"); do
  run_one husk "$r"
  run_one qemu "$r"
done

missing=""
fig() { awk -v f="$2" '$1 == f && $2 != "" {print $2}' "$work/$1.figs" 2>/dev/null | median; }
row() {  # LABEL FIGURE
  local h q ratio
  h=$(fig husk "$2") q=$(fig qemu "$2")
  [ -n "$h" ] || missing="$missing husk:$2"
  [ -n "$q" ] || missing="$missing qemu:$2"
  ratio=$(awk -v h="$h" -v q="$q" 'BEGIN{ if (q > 0 && h > 0) printf "%.2f", h / q; else print "n/a" }')
  printf '%-16s husk %8s MiB/s   qemu %8s MiB/s   ratio husk/qemu %s\n' "$1" "${h:-n/a}" "${q:-n/a}" "$ratio"
}
echo "bench: medians of $REPS rounds, $MB MiB per figure; host dd: read ${host_r:-n/a} MiB/s, write ${host_w:-n/a} MiB/s"
row "block seq read" blk_read
row "block seq write" blk_write
row "net tcp g->h" net_gh
row "net tcp h->g" net_hg
row "vsock h->g" vsock_hg
if [ -n "$missing" ]; then
  echo "bench: missing figures:$missing"
  exit 1
fi
