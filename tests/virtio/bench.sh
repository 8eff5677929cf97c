#!/usr/bin/env bash
# Throughput of husk-vmm's virtio devices against QEMU microvm (virtio-mmio) in the same
# testbed run: same guest kernel build (husk boots build/kernel/vmlinux, QEMU microvm needs
# build/kernel/bzImage of the same build), same guest RAM (256 MiB), 1 vCPU, same initramfs
# and guest commands:
#   block: sequential read and write of a BENCH_MB image (guest dd, 1 MiB blocks, buffered,
#          write with conv=fsync), timed in the guest; host dd on the same file as the ceiling;
#   net:   BENCH_MB over TCP through a tap in a netns, guest -> host (guest `vsock-tool
#          tcp-send`, host sink timed from first byte to EOF) and host -> guest (host sends,
#          guest `vsock-tool tcp-sink` replies with the count; timed on the host). QEMU's tap
#          backend is its userspace one (no vhost-net), like husk's. The guest's TCP runs
#          without HyStart: with it, slow start ends on the testbed's emulated RTT jitter at a
#          random, often tiny window, and guest -> host swings between ~2 and ~14 MiB/s on
#          either VMM (a lottery, not the device); without it both run steadily;
#   vsock: BENCH_MB host -> guest (to `vsock-tool sink`, timed on the host from connect to the
#          guest's byte-count reply) and guest -> host (host asks `vsock-tool spout`, timed
#          from the request to EOF). husk: hybrid unix socket; QEMU: vhost-vsock-device (the
#          in-kernel backend, the strongest QEMU has) with an AF_VSOCK socket.
# Senders and receivers do not checksum (correctness is the tests' job), so neither side's
# CPU caps the figures. BENCH_REPS rounds (default 5: single transfers in the testbed swing
# by 2x, so one round says little) each run both VMMs, QEMU first in every other round: the
# second VM of a pair runs a few percent faster (an A/B of two husk-vmm builds with the same
# vsock speed came out 3-10% ahead for whichever ran second); in each run the
# host-driven transfers (net h->g, vsock both ways) repeat BENCH_XFERS times (default 3), so a
# figure has REPS x XFERS samples for the price of REPS boots;
# each figure is the median, printed with the middle half of its samples; prints "ratio
# husk/qemu" per figure (>1: husk is faster) with a 90% bootstrap interval and a verdict
# (ratio.py: "above"/"below" when the whole interval is on one side of 1, else "on par": the
# run cannot tell the two apart), and husk-vmm's device counters of each run. Exits non-zero,
# naming the figures, if any is missing.
# Run: tests/virtio/build.sh && tests/testbed/run --timeout 3600 -- tests/virtio/bench.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
MB=${BENCH_MB:-32}
REPS=${BENCH_REPS:-5}
XFERS=${BENCH_XFERS:-3}
[[ "$MB" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_MB must be a positive integer, got '$MB'"; exit 2; }
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_REPS must be a positive integer, got '$REPS'"; exit 2; }
[[ "$XFERS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_XFERS must be a positive integer, got '$XFERS'"; exit 2; }
PY=$(host_python) || { echo "bench: python3 does not run"; exit 1; }
[ -x "$VSOCK_TOOL" ] || { echo "bench: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
BYTES=$((MB * 1048576))
ns=husk-bench-$$
tap=hb$$
qemu_pid="" sink_pid=""
cleanup_bench() {
  [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null
  [ -n "$sink_pid" ] && kill -KILL "$sink_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  cleanup_vmm
}
trap cleanup_bench EXIT
trap 'exit 130' INT TERM
ip netns add "$ns" && ip netns exec "$ns" ip link set lo up || { echo "bench: cannot create netns $ns"; exit 1; }
[ -c /dev/vhost-vsock ] || echo "bench: no /dev/vhost-vsock here: QEMU's vsock figures will be missing"

up() { date +%s.%N; }
mkinit_x bench "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { vsock-tool now; }
t0=\$(up); dd if=/dev/vda of=/dev/null bs=1048576 2>/dev/null; t1=\$(up)
dd if=/dev/zero of=/dev/vda bs=1048576 count=$MB conv=fsync 2>/dev/null; t2=\$(up)
echo \"HUSK-BENCH blk_read_s=\$(awk \"BEGIN{print \$t1-\$t0}\") blk_write_s=\$(awk \"BEGIN{print \$t2-\$t1}\")\"
ip link set eth0 up && ip addr add 10.0.98.2/24 dev eth0
echo 0 >/sys/module/tcp_cubic/parameters/hystart
vsock-tool tcp-sink 7001 >/dev/null &
vsock-tool sink 5000 >/dev/null &
vsock-tool spout 5001 >/dev/null &
vsock-tool tcp-send 10.0.98.1 7000 $BYTES
vsock-tool wait 5099
echo \"HUSK-DIAG tcp_retrans_segs=\$(awk '/^Tcp:/ { if (!h) { split(\$0, n); h = 1 } else for (i = 1; i <= NF; i++) if (n[i] == \"RetransSegs\") print \$i }' /proc/net/snmp) irqs=\$(awk '/virtio/ { printf \"%s:%s,\", \$NF, \$2 }' /proc/interrupts)\"
reboot -f" "$VSOCK_TOOL:/bin/vsock-tool"

# The guest -> host sink in the namespace: times first byte to EOF, replies with the count.
sink() {
  ip netns exec "$ns" "$PY" -c "
import socket,time
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('10.0.98.1',7000)); l.listen(1)
got=0; t0=None; buf=bytearray(1<<20)
try:
    l.settimeout(420); c,_=l.accept(); c.settimeout(300)
    while True:
        k=c.recv_into(buf)
        if not k: break
        if t0 is None: t0=time.time()
        got+=k
    dt=time.time()-t0 if t0 else 0
    c.sendall(b'%d\n' % got); c.close()
except OSError as e:
    print('incomplete: got %d bytes (%s)' % (got, e), flush=True); raise SystemExit(1)
print('net_gh_s=%.3f bytes=%d' % (dt, got) if got == $BYTES else 'incomplete: got %d bytes' % got, flush=True)
" >"$work/sink.out" 2>&1 &
  sink_pid=$!
  for _ in $(seq 300); do ip netns exec "$ns" ss -Hltn | grep -q '10.0.98.1:7000 ' && return; sleep 0.2; done
  echo "bench: the host TCP sink did not start: $(cat "$work/sink.out")"
}
host_retrans() { ip netns exec "$ns" awk '/^Tcp:/ { if (!h) { split($0, n); h = 1 } else for (i = 1; i <= NF; i++) if (n[i] == "RetransSegs") print $i }' /proc/net/snmp; }
val() { grep -ao "$2=[0-9.]*" "$1" 2>/dev/null | head -1 | cut -d= -f2; }
mbps() { awk -v s="$1" -v mb="$MB" 'BEGIN{ if (s > 0) printf "%.1f", mb / s; else print "" }'; }

# host ceiling
truncate -s "${MB}M" "$work/host.img"; dd if=/dev/urandom of="$work/host.img" bs=1M count="$MB" conv=notrunc 2>/dev/null
t0=$(up); dd if="$work/host.img" of=/dev/null bs=1M 2>/dev/null; t1=$(up)
dd if=/dev/zero of="$work/host.img" bs=1M count="$MB" conv=fsync,notrunc 2>/dev/null; t2=$(up)
host_r=$(mbps "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')") host_w=$(mbps "$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b-a}')")
echo "bench: host dd read ${host_r:-n/a} MiB/s, write ${host_w:-n/a} MiB/s; $MB MiB per figure, $REPS round(s)"

# Whether this round's VM still runs: a VM that died ends the waits and skips the transfers.
alive() { kill -0 "${qemu_pid:-$vmm_pid}" 2>/dev/null; }
# run_one VMM ROUND: one VM run; appends "figure value" lines to $work/VMM.figs.
run_one() {
  local vmm=$1 r=$2 out="$work/$1.$2.out" vs_target i retrans0
  ip netns exec "$ns" ip tuntap add dev "$tap" mode tap vnet_hdr
  ip -n "$ns" addr add 10.0.98.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  sink
  retrans0=$(host_retrans)
  cp "$work/host.img" "$work/disk.img"
  rm -f "$work/qemu.err" "$work/counters.json"
  if [ "$vmm" = husk ]; then
    vs_target=$work/v.sock
    rm -f "$vs_target" "$work/api.sock"
    start_vm "husk.$r" "$work/bench.cpio.gz" --disk "path=$work/disk.img" \
      --net "tap=$tap,netns=/var/run/netns/$ns" --vsock "cid=3,uds=$vs_target" --api-sock "$work/api.sock"
  else
    vs_target=vsock:3
    ip netns exec "$ns" qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu EPYC \
      -smp 1 -m 256 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
      -kernel "$KDIR/bzImage" -initrd "$work/bench.cpio.gz" -append "$CMDLINE" \
      -drive "id=d0,file=$work/disk.img,format=raw,if=none" -device virtio-blk-device,drive=d0 \
      -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-device,netdev=n0 \
      -device vhost-vsock-device,guest-cid=3 >"$out" 2>"$work/qemu.err" </dev/null &
    qemu_pid=$!
  fi
  # Block figures first (printed by the guest), then the guest's TCP send ends in the sink
  # (which gives up after its own timeouts). Blocks in wait rather than polling: each fork
  # of a polling loop costs ~30 ms of the testbed's one vCPU, taken from the timed work.
  local vm_pid=${qemu_pid:-$vmm_pid} done_pid=""
  wait -n -p done_pid "$sink_pid" "$vm_pid"
  case $done_pid in
    "$sink_pid") sink_pid="" ;;
    "$vm_pid") qemu_pid="" vmm_pid="" ;; # the VM exited early (reaped): skip what follows
  esac
  : >"$work/net_hg.log"; : >"$work/vsock_hg.log"; : >"$work/vsock_gh.log"
  for i in $(seq "$XFERS"); do
    alive && timeout -k 5 300 ip netns exec "$ns" "$PY" "$vdir/vsock_host.py" blast tcp:10.0.98.2 7001 "$BYTES" >>"$work/net_hg.log" 2>&1
    alive && timeout -k 5 300 "$PY" "$vdir/vsock_host.py" blast "$vs_target" 5000 "$BYTES" >>"$work/vsock_hg.log" 2>&1
    alive && timeout -k 5 300 "$PY" "$vdir/vsock_host.py" pull "$vs_target" 5001 "$BYTES" >>"$work/vsock_gh.log" 2>&1
  done
  if [ "$vmm" = husk ] && [ -S "$work/api.sock" ]; then
    curl -s --max-time 10 --unix-socket "$work/api.sock" http://localhost/vm/counters >"$work/counters.json"
  fi
  alive && timeout -k 5 60 "$PY" "$vdir/vsock_host.py" poke "$vs_target" 5099 >/dev/null 2>&1
  if [ "$vmm" = husk ]; then
    [ -n "$vmm_pid" ] && wait_vm 120
  else
    for i in $(seq 600); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; qemu_pid=""
  fi
  [ -n "$sink_pid" ] && { kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null; sink_pid=""; }
  # Frames the guest sent (the tap's rx) and got (tx), and host TCP retransmissions (h->g).
  local tapstat hostre
  tapstat=$(cd /tmp && ip netns exec "$ns" sh -c "cd /sys/class/net/$tap/statistics && echo from guest \$(cat rx_bytes) B in \$(cat rx_packets) frames, \$(cat rx_dropped) dropped, to guest \$(cat tx_bytes) B in \$(cat tx_packets) frames, \$(cat tx_dropped) dropped" 2>&1)
  hostre=$(( $(host_retrans) - ${retrans0:-0} ))
  ip netns exec "$ns" ip link del "$tap" 2>/dev/null
  local gh hg vhg vgh
  gh=$(mbps "$(val "$work/sink.out" net_gh_s)")
  hg=$(rates "$work/net_hg.log" | xargs) vhg=$(rates "$work/vsock_hg.log" | xargs) vgh=$(rates "$work/vsock_gh.log" | xargs)
  {
    echo "blk_read $(mbps "$(val "$out" blk_read_s)")"
    echo "blk_write $(mbps "$(val "$out" blk_write_s)")"
    echo "net_gh $gh"
    for f in net_hg vsock_hg vsock_gh; do rates "$work/$f.log" | sed "s/^/$f /"; done
  } >>"$work/$vmm.figs"
  echo "bench: round $r $vmm: $(grep -a HUSK-BENCH "$out" | tr -d '\r' || echo "no block figures"); tcp g->h ${gh:-n/a}, h->g ${hg:-n/a} MiB/s; vsock h->g ${vhg:-n/a}, g->h ${vgh:-n/a} MiB/s"
  echo "bench: round $r $vmm diag: tap: $tapstat; host tcp retrans $hostre; guest: $(grep -a HUSK-DIAG "$out" | tr -d '\r' | cut -d' ' -f2-)"
  [ -s "$work/counters.json" ] && echo "bench: round $r husk-vmm counters: $(cat "$work/counters.json")"
  grep -q HUSK-BENCH "$out" || {
    echo "bench: $vmm round $r gave no block figures; console and stderr:"
    tail -5 "$out"; tail -3 "$work/qemu.err" "$work/husk.$r.err" 2>/dev/null
  }
  [ -n "$gh" ] || echo "bench: $vmm round $r tcp g->h: $( [ -s "$work/sink.out" ] && cat "$work/sink.out" || echo "the guest never finished sending to the host sink")"
  local f why
  for f in net_hg vsock_hg vsock_gh; do
    (( $(rates "$work/$f.log" | wc -l) == XFERS )) && continue
    why=$(grep -v 'MiB/s' "$work/$f.log" | tail -2 | tr '\n' ' ')
    echo "bench: $vmm round $r $f: $(rates "$work/$f.log" | wc -l) of $XFERS transfer(s) complete: ${why:-the others did not run (the VM had exited)}"
  done
  rm -f "$work/sink.out"
}

for r in $(seq 1 "$REPS"); do
  if ((r % 2)); then
    run_one husk "$r"
    run_one qemu "$r"
  else
    run_one qemu "$r"
    run_one husk "$r"
  fi
done

missing=""
[ -n "$host_r" ] || missing="$missing host:blk_read"
[ -n "$host_w" ] || missing="$missing host:blk_write"
samples() { awk -v f="$2" '$1 == f && $2 != "" {print $2}' "$work/$1.figs" 2>/dev/null; }
fig() { samples "$1" "$2" | median; }
# The middle half of a figure's samples (first to third quartile, nearest rank), "lo-hi".
spread() {
  samples "$1" "$2" | sort -n | awk '{a[NR]=$1} END { if (NR) printf "%s-%s", a[int((NR+3)/4)], a[int((3*NR+3)/4)]; else printf "n/a" }'
}
row() {  # LABEL FIGURE
  local h q
  h=$(fig husk "$2") q=$(fig qemu "$2")
  [ -n "$h" ] || missing="$missing husk:$2"
  [ -n "$q" ] || missing="$missing qemu:$2"
  printf '%-16s husk %8s MiB/s %-13s  qemu %8s MiB/s %-13s  ratio husk/qemu %s\n' "$1" "${h:-n/a}" \
    "($(spread husk "$2"))" "${q:-n/a}" "($(spread qemu "$2"))" \
    "$("$PY" "$vdir/ratio.py" "$(samples husk "$2" | xargs)" "$(samples qemu "$2" | xargs)")"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
hostrow() {  # LABEL FIGURE HOST_MIBS: guest figure against host dd on the same file
  printf '%-16s husk/host %s   qemu/host %s   (host dd %s MiB/s)\n' "$1" \
    "$(ratio "$(fig husk "$2")" "$3")" "$(ratio "$(fig qemu "$2")" "$3")" "${3:-n/a}"
}
echo "bench: medians of $REPS round(s) ($XFERS transfers per round for net h->g and vsock; the middle half of the samples in brackets), $MB MiB per figure; host dd on the same file: read ${host_r:-n/a} MiB/s, write ${host_w:-n/a} MiB/s"
row "block seq read" blk_read
row "block seq write" blk_write
hostrow "block read/host" blk_read "$host_r"
hostrow "block write/host" blk_write "$host_w"
row "net tcp g->h" net_gh
row "net tcp h->g" net_hg
row "vsock h->g" vsock_hg
row "vsock g->h" vsock_gh
if [ -n "$missing" ]; then
  echo "bench: FAILED: figures missing (n/a above):$missing"
  exit 1
fi
