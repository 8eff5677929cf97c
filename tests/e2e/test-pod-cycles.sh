#!/usr/bin/env bash
# Pod create/delete cycles (HUSK_POD_CYCLES, default 15; test-cycles.sh runs the single
# containers): each cycle boots a pod's VM with its sandbox container, runs a member container
# in it that reads a host directory through a bind mount (a disk slot attach and the pod's
# virtiofsd), checks what it printed, then kills and deletes the sandbox. After the cycles
# nothing is left, counted from /proc, /proc/self/mounts and /sys (leak_check): no VMM, shim
# or virtiofsd, no process of a jail uid, no mount, no loop device, no state; containerd's
# descriptor count does not grow. Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
n=${HUSK_POD_CYCLES:-15}
T=${HUSK_E2E_TIMEOUT:-600}
mkdir -p "$E2E_WORK/vol"
fds_before=$(ls /proc/"$CTRD_PID"/fd | wc -l)
for i in $(seq 1 "$n"); do
  echo "volume of cycle $i" >"$E2E_WORK/vol/f"
  timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=sandbox" --annotation "$SB=pc-$i" \
    "$IMAGE" "pc-$i" sleep 100000 >/dev/null
  out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=pc-$i" \
    --mount "type=bind,src=$E2E_WORK/vol,dst=/vol,options=rbind:ro" "$IMAGE" "pm-$i" cat /vol/f)
  assert_eq "volume of cycle $i" "$out" "member of pod $i"
  kill_rm "pc-$i"
done
leak_check
fds_after=$(ls /proc/"$CTRD_PID"/fd | wc -l)
[ "$fds_after" -le $((fds_before + 5)) ] || fail "containerd fds grew from $fds_before to $fds_after"
log "test-pod-cycles: $n pod cycles, nothing leaked"
