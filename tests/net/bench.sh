#!/usr/bin/env bash
# Network benchmark, husk against runc (veth only) in the same run, both through `ctr run
# --cni` on one CNI bridge: TCP throughput node→pod, pod→node and pod→pod, TCP connect +
# request latency to busybox httpd in the container, and the CPU husk-vmm spends per GiB moved
# (node↔pod). Printed as husk/runc ratios (throughput: higher is better; latency: lower).
# Needs hardware KVM (run by `make bench` in the testbed). NET_BENCH_MIB sizes each transfer.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
net_setup
MIB=${NET_BENCH_MIB:-64}
REQS=${NET_BENCH_REQS:-50}
T=${HUSK_E2E_TIMEOUT:-900}
PY=$NET_LIB_DIR/bench.py

# A container of runtime RT serving: httpd on 80, a sink on 5001 (node→pod and pod→pod), the
# pod→node sender started by exec. run_ctr RT ID
run_ctr() {
  timeout "$T" ctr -a "$CTR_ADDR" run --cni --rm --runtime "$1" "$IMAGE" "$2" sh -c \
    "mkdir -p /www && echo ok >/www/index.html && httpd -p 80 -h /www && while true; do nc -l -p 5001 >/dev/null; done" \
    >"$E2E_WORK/$2.out" 2>&1 &
  echo $! >"$E2E_WORK/$2.ctr"
}

cpu_ticks() { # PID: utime + stime of a process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Where husk-vmm's CPU goes: "VCPU DEVICES", the ticks of its vCPU threads (the guest's own
# work and its exits) and of the rest (the device event loop, which also carries the host
# network stack of each frame it writes to the tap).
cpu_split() { # PID
  local t v=0 d=0 n
  for t in /proc/"$1"/task/*; do
    n=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
    case "$(cat "$t/comm" 2>/dev/null)" in vcpu-*) v=$((v + n)) ;; *) d=$((d + n)) ;; esac
  done
  echo "$v $d"
}

# The net device's counters of husk container CTR, from husk-vmm's API.
net_counters() { # CTR
  local sock
  sock=$(find "$E2E_WORK/run-husk" -path "*/$1/*" -name api.sock 2>/dev/null | head -1)
  [ -n "$sock" ] && curl -s --max-time 20 --unix-socket "$sock" http://localhost/vm/counters
}

# "VCPU_S DEV_S" per GiB from two cpu_split outputs and a byte count.
per_gib() { # "V0 D0" "V1 D1" BYTES
  python3 -c "import sys; v0, d0 = map(int, sys.argv[1].split()); v1, d1 = map(int, sys.argv[2].split()); g = int(sys.argv[3]) / 2**30; t = $(getconf CLK_TCK); print(f'{(v1 - v0) / t / g:.1f} {(d1 - d0) / t / g:.1f}')" "$1" "$2" "$3"
}

# Mean frame sizes (bytes) the net device moved, "RX TX", between two counter snapshots.
frame_sizes() { # JSON0 JSON1
  python3 -c "
import json, sys
a, b = (next(v for k, v in json.loads(x).items() if k.startswith('net.')) for x in sys.argv[1:3])
f = lambda k: (b[k + '_bytes'] - a[k + '_bytes']) / max(1, b[k + '_frames'] - a[k + '_frames'])
print(f'{f(\"rx\"):.0f} {f(\"tx\"):.0f}')" "$1" "$2" 2>/dev/null || echo "? ?"
}

vmm_of() { # CTR: the husk-vmm of a husk container (its state.json)
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vmm_pid"])' "$(ls "$E2E_WORK"/run-husk/*/"$1"/state.json)"
}

mbps() { python3 -c "import sys; print(f'{$1 / 1048576 / $2:.1f}')"; }

for rt in runc husk; do
  runtime=$RUNTIME
  [ "$rt" = runc ] && runtime=io.containerd.runc.v2
  run_ctr "$runtime" "$rt-a"
  run_ctr "$runtime" "$rt-b"
  net_wait_running "$rt-a"
  net_wait_running "$rt-b"
  a=$(net_ip "$rt-a")
  b=$(net_ip "$rt-b")
  # The servers are up once httpd answers.
  for _ in $(seq 120); do python3 "$PY" latency "$a" 80 1 >/dev/null 2>&1 && python3 "$PY" latency "$b" 80 1 >/dev/null 2>&1 && break; sleep 1; done
  ticks0=0
  if [ "$rt" = husk ]; then
    ticks0=$(cpu_ticks "$(vmm_of "$rt-a")")
    split0=$(cpu_split "$(vmm_of "$rt-a")")
    cnt0=$(net_counters "$rt-a")
  fi

  # node → pod
  s=$(python3 "$PY" send "$a" 5001 "$MIB")
  eval "${rt}_n2p=\$(mbps $((MIB << 20)) $s)"
  if [ "$rt" = husk ]; then
    split1=$(cpu_split "$(vmm_of "$rt-a")")
    cnt1=$(net_counters "$rt-a")
  fi
  # pod → node: the pod sends MIB MiB to a receiver on the bridge's address.
  python3 "$PY" recv "$NET_GW" 5002 600 >"$E2E_WORK/recv.out" 2>"$E2E_WORK/recv.err" &
  rp=$!
  for _ in $(seq 600); do grep -q listening "$E2E_WORK/recv.err" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$E2E_WORK/recv.err" || fail "the receiver on $NET_GW:5002 did not listen: $(cat "$E2E_WORK/recv.err")"
  ctr_ task exec --exec-id "p2n$RANDOM" "$rt-a" sh -c "dd if=/dev/zero bs=65536 count=$((MIB * 16)) 2>/dev/null | nc $NET_GW 5002"
  wait "$rp"
  read -r bytes secs <"$E2E_WORK/recv.out"
  eval "${rt}_p2n=\$(mbps $bytes $secs)"
  if [ "$rt" = husk ]; then
    ticks1=$(cpu_ticks "$(vmm_of "$rt-a")")
    split2=$(cpu_split "$(vmm_of "$rt-a")")
    cnt2=$(net_counters "$rt-a")
    read -r n2p_vcpu n2p_dev < <(per_gib "$split0" "$split1" $((MIB << 20)))
    read -r p2n_vcpu p2n_dev < <(per_gib "$split1" "$split2" "$bytes")
    read -r n2p_rx _ < <(frame_sizes "$cnt0" "$cnt1")
    read -r _ p2n_tx < <(frame_sizes "$cnt1" "$cnt2")
    husk_cpu=$(python3 -c "print(f'{($ticks1 - $ticks0) / $(getconf CLK_TCK) / ($MIB * 2 / 1024):.2f}')")
  fi
  # pod → pod: a sends to b, timed in a by busybox time (10 ms resolution).
  out=$(ctr_ task exec --exec-id "p2p$RANDOM" "$rt-a" sh -c "time sh -c 'dd if=/dev/zero bs=65536 count=$((MIB * 16)) 2>/dev/null | nc $b 5001' 2>&1")
  secs=$(sed -n 's/^real[[:space:]]*\([0-9]*\)m \([0-9.]*\)s.*/\1 \2/p' <<<"$out" | awk '{print $1 * 60 + $2}')
  [ -n "$secs" ] && [ "$secs" != 0 ] || fail "no timing from time in $rt-a: $out"
  eval "${rt}_p2p=\$(mbps $((MIB << 20)) $secs)"
  # latency
  read -r med p90 < <(python3 "$PY" latency "$a" 80 "$REQS")
  eval "${rt}_lat=$med ${rt}_p90=$p90"
  for c in "$rt-a" "$rt-b"; do ctr_ task kill -s KILL "$c"; done
  for c in "$rt-a" "$rt-b"; do wait "$(cat "$E2E_WORK/$c.ctr")" || true; done
done

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "net bench (${MIB} MiB per transfer, ${REQS} requests; testbed figures: compare ratios, not absolutes)"
printf '  %-22s %10s %10s %8s\n' "" husk runc husk/runc
printf '  %-22s %10s %10s %8s\n' "node→pod MiB/s" "$husk_n2p" "$runc_n2p" "$(ratio "$husk_n2p" "$runc_n2p")"
printf '  %-22s %10s %10s %8s\n' "pod→node MiB/s" "$husk_p2n" "$runc_p2n" "$(ratio "$husk_p2n" "$runc_p2n")"
printf '  %-22s %10s %10s %8s\n' "pod→pod MiB/s" "$husk_p2p" "$runc_p2p" "$(ratio "$husk_p2p" "$runc_p2p")"
printf '  %-22s %10s %10s %8s\n' "HTTP latency ms (med)" "$husk_lat" "$runc_lat" "$(ratio "$husk_lat" "$runc_lat")"
printf '  %-22s %10s %10s %8s\n' "HTTP latency ms (p90)" "$husk_p90" "$runc_p90" "$(ratio "$husk_p90" "$runc_p90")"
echo "  husk-vmm CPU per GiB moved node↔pod: $husk_cpu s"
echo "    node→pod: guest vCPU $n2p_vcpu s, device threads $n2p_dev s; mean frame to the guest $n2p_rx bytes"
echo "    pod→node: guest vCPU $p2n_vcpu s, device threads $p2n_dev s; mean frame from the guest $p2n_tx bytes"
net_leak_check
