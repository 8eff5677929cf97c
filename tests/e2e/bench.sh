#!/usr/bin/env bash
# Benchmarks in one testbed run (needs hardware KVM: run inside tests/testbed/run):
#  * `ctr run --rm IMAGE true` latency, husk vs runc (median of HUSK_BENCH_RUNS, default 5)
#  * RSS of the shim and of husk-vmm for one idle container
#  * HUSK_BENCH_CONCURRENT (default 10) containers started at once: wall time, all must succeed
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
runs=${HUSK_BENCH_RUNS:-5}
conc=${HUSK_BENCH_CONCURRENT:-10}
T=${HUSK_E2E_TIMEOUT:-900}
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

time_runs() { # RUNTIME PREFIX
  local i s
  for i in $(seq 0 "$runs"); do
    s=$(date +%s%N)
    timeout -k 10 "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$1" "$IMAGE" "$2-$i" true </dev/null >/dev/null
    [ "$i" = 0 ] || ms "$s"   # run 0 warms the image (snapshot unpack, image cache)
  done
}
runc_ms=$(time_runs io.containerd.runc.v2 bench-runc | median)
husk_ms=$(time_runs "$RUNTIME" bench-husk | median)
echo "ctr run --rm true: runc ${runc_ms} ms, husk ${husk_ms} ms (median of $runs), husk/runc = $(awk -v h="$husk_ms" -v r="$runc_ms" 'BEGIN{printf "%.1f", h/r}')x"

timeout -k 10 "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" bench-idle sleep 100000 >/dev/null
sleep 2
shim_pid=$(cat "$E2E_WORK"/ctrd/state/io.containerd.runtime.v2.task/default/bench-idle/shim.pid)
vmm_pid=$(sed -n 's/.*"vmm_pid": *\([0-9]*\).*/\1/p' "$E2E_WORK/run-husk/default/bench-idle/state.json")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "idle container: shim RSS $(rss "$shim_pid") KiB, husk-vmm RSS $(rss "$vmm_pid") KiB (guest RAM touched included)"
ctr_ task kill -s SIGKILL bench-idle
timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep bench-idle | grep -q STOPPED; do sleep 0.5; done"
ctr_ task rm bench-idle >/dev/null; ctr_ containers rm bench-idle

s=$(date +%s%N)
pids=()
for i in $(seq 1 "$conc"); do
  timeout -k 10 "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$IMAGE" "bench-c$i" echo "c$i" </dev/null >"$E2E_WORK/c$i.out" 2>&1 &
  pids+=($!)
done
bad=0
for i in "${!pids[@]}"; do wait "${pids[$i]}" || bad=$((bad + 1)); done
wall=$(ms "$s")
for i in $(seq 1 "$conc"); do grep -qx "c$i" "$E2E_WORK/c$i.out" || { bad=$((bad + 1)); cat "$E2E_WORK/c$i.out" >&2; }; done
echo "$conc containers concurrently: ${wall} ms wall, $bad failed"
leak_check
[ "$bad" = 0 ]
