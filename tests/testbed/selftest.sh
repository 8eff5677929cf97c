#!/usr/bin/env bash
# Tests of the testbed itself, run on the host: the command's output and exit status come
# through; two runs at once don't clash; a hanging command is killed at the timeout with a
# clear message and no QEMU left behind; a frozen outer VM is detected.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run="$here/run"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Our runs keep their temp dirs here, so leak checks see only this test's VMs.
export TMPDIR="$tmp/tb"
mkdir -p "$TMPDIR"
pass=0 fail=0
# check NAME CONDITION [LOG]: on failure, LOG's last lines are shown.
check() {
  if eval "$2"; then pass=$((pass+1)); echo "ok: $1"; return; fi
  fail=$((fail+1)); echo "FAIL: $1"
  [ -n "${3:-}" ] && tail -25 "$3" | sed 's/^/    | /'
  return 0
}

# Two at once: distinct exit statuses and outputs, a results dir written from inside.
mkdir -p "$tmp/outA"
"$run" --timeout 300 --out "$tmp/outA" -- bash -c 'echo marker-A; echo result >"$HUSK_TESTBED_OUT/r.txt"; [ -c /dev/kvm ] || exit 9; exit 3' >"$tmp/a.log" 2>&1 &
pa=$!
"$run" --timeout 300 -- bash -c 'echo marker-B; touch /tmp/w && test -w /run && exit 0' >"$tmp/b.log" 2>&1 &
pb=$!
wait $pa; ra=$?
wait $pb; rb=$?
check "exit status passes through (3)" '[ $ra = 3 ]'
check "second concurrent run exits 0 with writable /tmp and /run" '[ $rb = 0 ]'
check "output streamed (A)" 'grep -q "^marker-A" "$tmp/a.log"'
check "output streamed (B)" 'grep -q "^marker-B" "$tmp/b.log"'
check "results dir written back" '[ "$(cat "$tmp/outA/r.txt" 2>/dev/null)" = result ]'
grep -h "ready after" "$tmp/a.log" "$tmp/b.log" | sed 's/^/  /'

# A hanging command is killed at the timeout.
"$run" --timeout 25 -- sleep 1000 >"$tmp/t.log" 2>&1; rt=$?
sleep 1
check "timeout gives exit 124" '[ $rt = 124 ]'
check "timeout message names the command" 'grep -q "timed out after 25 s" "$tmp/t.log"'
check "no QEMU left after the timeout" '! pgrep -f "qemu-system.*$TMPDIR" >/dev/null'
# Sends one command to the monitor of the (only) outer VM running under $TMPDIR, waiting for
# its reply (monitor.py): a `stop` sent with an immediate hang-up was seen to be lost.
mon() { python3 "$here/monitor.py" "$TMPDIR/husk-testbed.*/monitor" "$1" >/dev/null; }
# Waits for the heartbeat of the (only) outer VM running under $TMPDIR; prints its run dir.
wait_heartbeat() {
  for _ in $(seq 120); do ls "$TMPDIR"/husk-testbed.*/heartbeat >/dev/null 2>&1 && break; sleep 1; done
  dirname "$(ls "$TMPDIR"/husk-testbed.*/heartbeat)"
}
# An outer VM whose heartbeat stops (here: told to stop writing it, so that no kick brings it
# back) is noticed well before the timeout: exit 123, with what the monitor shows.
HUSK_TESTBED_STALL=30 "$run" --timeout 600 -- sleep 1000 >"$tmp/s.log" 2>&1 &
ps_=$!
touch "$(wait_heartbeat)/no-heartbeat"
wait $ps_; rs=$?
check "a stalled outer VM gives exit 123" '[ $rs = 123 ]'
check "the stall is reported with the monitor's view" 'grep -q "no heartbeat from the outer VM" "$tmp/s.log" && grep -q "info registers" "$tmp/s.log"'
check "no QEMU left after the stall" '! pgrep -f "qemu-system.*$TMPDIR" >/dev/null'
check "a keyboard interrupt was tried first" 'grep -q "keyboard interrupt did not wake" "$tmp/s.log"'
check "then stop/cont and an NMI" 'grep -q "stop/cont and an NMI did not wake" "$tmp/s.log"'
# A VM whose heartbeat comes back after the kick goes on: frozen by `stop`, let go with `cont`
# once the stall is reported (standing in for the interrupt QEMU failed to deliver).
HUSK_TESTBED_STALL=30 "$run" --timeout 600 -- sleep 60 >"$tmp/k.log" 2>&1 &
pk=$!
wait_heartbeat >/dev/null
mon "stop"
for _ in $(seq 120); do grep -q "no heartbeat" "$tmp/k.log" && break; sleep 1; done
mon "cont"
wait $pk; rk=$?
check "a VM that wakes up again finishes its command (exit 0)" '[ $rk = 0 ]' "$tmp/k.log"
check "the wake-up is reported" 'grep -q "runs again (heartbeat back)" "$tmp/k.log"' "$tmp/k.log"
# A heartbeat a few beats late gets an early keyboard kick, without the full report; the run
# goes on when it is back.
HUSK_TESTBED_STALL=300 HUSK_TESTBED_EARLY_KICK=20 "$run" --timeout 600 -- sleep 80 >"$tmp/e.log" 2>&1 &
pe=$!
rd=$(wait_heartbeat)
touch "$rd/no-heartbeat"
for _ in $(seq 90); do grep -q "early keyboard kick" "$tmp/e.log" && break; sleep 1; done
rm -f "$rd/no-heartbeat"
wait $pe; re=$?
check "a late heartbeat gets an early keyboard kick" 'grep -q "heartbeat [0-9]* s old: early keyboard kick" "$tmp/e.log"'
check "its return is reported, the command finishes (exit 0)" '[ $re = 0 ] && grep -q "heartbeat back) after an early keyboard kick" "$tmp/e.log"'
check "no full stall report for it" '! grep -q "no heartbeat from the outer VM" "$tmp/e.log"'
check "bad option is refused" '! "$run" --bogus -- true 2>/dev/null'
(cd /tmp && "$run" --vm -- true) >"$tmp/t.log" 2>&1; rt=$?
check "a working directory the outer VM would hide (/tmp) is refused (exit 125), saying why" '[ $rt = 125 ] && grep -q "below /tmp, which the outer VM covers" "$tmp/t.log"'
check "no temp dirs left" '[ -z "$(ls -A "$TMPDIR")" ]'
echo "testbed selftest: $pass passed, $fail failed"
[ $fail = 0 ]
