#!/usr/bin/env bash
# A TaskExit reaches a containerd that restarted while the container ran: start a container
# with ctr, stop containerd, let the container exit while containerd is away, start
# containerd again (same state, debug log), and check that it received the shim's
# /tasks/exit (its debug log says "event forwarded" for that topic: ctr task ls alone would
# not tell, containerd asks the shim for the state) and shows the task stopped with exit code
# 7. Nothing is left behind. Needs hardware KVM (run inside tests/testbed/run). 1 VM boot.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
id=r-restart
sleep_s=20
# Pids of the shim serving $id, from /proc.
shim_pids() { pgrep -f -- "containerd-shim-husk-v2 .*-id $id( |\$)" || true; }

timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" "$id" sh -c "sleep $sleep_s; exit 7" >/dev/null
timeout "$T" sh -c "until ctr -a '$CTR_ADDR' task ls | grep '^$id ' | grep -q RUNNING; do sleep 0.3; done"
shim=$(ctr_ task ls | awk -v id="$id" '$1 == id {print $2}')
log "container $id running (pid $shim); stopping containerd"
kill -TERM "$CTRD_PID"
wait "$CTRD_PID" || true
# The container exits while containerd is away; the shim keeps trying to publish.
sleep $((sleep_s + 10))
[ -n "$(shim_pids)" ] || fail "the shim of $id did not outlive containerd"

printf '\n[debug]\n  level = "debug"\n' >>"$E2E_WORK/ctrd/config.toml"
PATH="$HUSK_BIN_DIR:$PATH" containerd --config "$E2E_WORK/ctrd/config.toml" >"$E2E_WORK/ctrd/containerd-2.log" 2>&1 &
CTRD_PID=$!
timeout 60 sh -c "until ctr -a '$CTR_ADDR' version >/dev/null 2>&1; do sleep 0.2; done" || fail "containerd did not come back"
log "containerd restarted"
# The shim retries at most every 5 s.
if ! timeout 60 sh -c "until grep -q 'event forwarded.*topic=/tasks/exit' '$E2E_WORK/ctrd/containerd-2.log'; do sleep 0.5; done"; then
  grep -a 'event forwarded' "$E2E_WORK/ctrd/containerd-2.log" | tail -5 >&2 || true
  fail "the restarted containerd never received the TaskExit of $id"
fi
log "restarted containerd got /tasks/exit: $(grep -a 'event forwarded.*topic=/tasks/exit' "$E2E_WORK/ctrd/containerd-2.log" | head -1 | grep -o 'ns=[^ ]* topic=[^ ]*')"
assert_contains "$(ctr_ task ls | grep "^$id ")" "STOPPED" "task state after the restart"
out=$(ctr_ task rm "$id" 2>&1 || true)
assert_contains "$out" "exit code 7" "exit status the restarted containerd reports"
ctr_ containers rm "$id"
assert_eq "" "$(ctr_ task ls -q)" "tasks after delete"
for _ in $(seq 200); do [ -z "$(shim_pids)" ] && break; sleep 0.3; done
[ -z "$(shim_pids)" ] || fail "the shim of $id did not exit after delete: $(shim_pids)"
leak_check
log "test-containerd-restart: all passed"
