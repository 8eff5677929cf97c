#!/usr/bin/env bash
# Create/delete cycles (HUSK_CYCLES, default 15; test-pod-cycles.sh runs pods; HUSK_CYCLES=50 HUSK_POD_CYCLES=50 is the 100-cycle soak) with a leak check after: no VMM or shim
# process, state directory, socket, mount or uncached image left, and containerd's fd count
# does not grow. Needs hardware KVM (tests/testbed/run). HUSK_CYCLES VM boots: templates are off
# here, so the boot path keeps its cycles (test-pod-cycles.sh restores its pods from a template).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
export HUSK_TEMPLATES=false
e2e_setup
n=${HUSK_CYCLES:-15}
fds_before=$(ls /proc/"$CTRD_PID"/fd | wc -l)
for i in $(seq 1 "$n"); do
  out=$(timeout "${HUSK_E2E_TIMEOUT:-600}" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$IMAGE" "cyc-$i" echo "cycle $i")
  assert_eq "cycle $i" "$out" "cycle $i output"
done
leak_check
images=$(ls "$E2E_WORK/images" | grep -c '\.ext4$\|\.erofs$' || true)
[ "$images" -le 1 ] || fail "$images cached images for one image: $(ls "$E2E_WORK/images")"
fds_after=$(ls /proc/"$CTRD_PID"/fd | wc -l)
[ "$fds_after" -le $((fds_before + 5)) ] || fail "containerd fds grew from $fds_before to $fds_after"
log "test-cycles: $n cycles, nothing leaked"
