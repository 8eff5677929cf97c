#!/usr/bin/env bash
# Tests of the testbed itself, run on the host: the command's output and exit status come
# through; two runs at once don't clash; a hanging command is killed at the timeout with a
# clear message and no QEMU left behind; a frozen outer VM is detected; the outer VM's root is a
# real one (runc's exec, /proc and /sys, the writable overlay) with netfilter and tc for CNI
# (selftest-root.sh, in the second of the first two runs).
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

# Two at once: distinct exit statuses and outputs, a results dir written from inside. The
# second one also records what the outer VM's root looks like (checked further down).
mkdir -p "$tmp/outA" "$tmp/outB"
alt_before=$(readlink /etc/alternatives/iptables 2>/dev/null)
"$run" --timeout 300 --out "$tmp/outA" -- bash -c 'echo marker-A; echo result >"$HUSK_TESTBED_OUT/r.txt"; [ -c /dev/kvm ] || exit 9; exit 3' >"$tmp/a.log" 2>&1 &
pa=$!
"$run" --timeout 900 --out "$tmp/outB" -- bash -c 'echo marker-B; touch /tmp/w && test -w /run && "$1" "$HUSK_TESTBED_OUT"' - "$here/selftest-root.sh" >"$tmp/b.log" 2>&1 &
pb=$!
wait $pa; ra=$?
wait $pb; rb=$?
check "exit status passes through (3)" '[ $ra = 3 ]'
check "second concurrent run exits 0 with writable /tmp and /run" '[ $rb = 0 ]' "$tmp/b.log"
check "output streamed (A)" 'grep -q "^marker-A" "$tmp/a.log"'
check "output streamed (B)" 'grep -q "^marker-B" "$tmp/b.log"'
check "results dir written back" '[ "$(cat "$tmp/outA/r.txt" 2>/dev/null)" = result ]'
grep -h "ready after" "$tmp/a.log" "$tmp/b.log" | sed 's/^/  /'

# The outer VM's root (selftest-root.sh's findings in outB).
o="$tmp/outB"
check "runc: a process exec'd into a container sees the image's root, not the initramfs" \
  'grep -qx -- "--- exit 0" "$o/exec-ls.txt" && grep -qx bin "$o/exec-ls.txt" && grep -qx etc "$o/exec-ls.txt" && grep -qx home "$o/exec-ls.txt" &&
   ! grep -qxE "init|linuxrc|modules.order|modules|lower|up|new" "$o/exec-ls.txt"' "$o/exec-ls.txt"
check "/proc is procfs and /sys is sysfs, each with its own content (not merged by the overlay)" \
  'grep -qx "/proc proc" "$o/fstypes.txt" && grep -qx "/sys sysfs" "$o/fstypes.txt" &&
   grep -q "/proc has /proc/self/status" "$o/fstypes.txt" && grep -q "/sys has /sys/class/net" "$o/fstypes.txt"' "$o/fstypes.txt"
probe=$(sed -n 2p "$o/probe.txt" 2>/dev/null)
check "a write to a host path succeeds in the outer VM and does not reach the host" \
  '[ "$(head -n1 "$o/probe.txt")" = written ] && [ -n "$probe" ] && [ ! -e "$probe" ]' "$o/probe.txt"
check "iptables -t nat -L works, through iptables-legacy" \
  'grep -qx /usr/sbin/iptables-legacy "$o/iptables.txt" && grep -q "^Chain POSTROUTING" "$o/iptables.txt"' "$o/iptables.txt"
check "the host's iptables alternative is untouched" '[ "$(readlink /etc/alternatives/iptables 2>/dev/null)" = "$alt_before" ]'
check "CNI bridge (ipMasq) + portmap: ADD gives the pod an address, DNAT and MASQUERADE rules" \
  'grep -qx "bridge ADD ok" "$o/cni.txt" && grep -qx "portmap ADD ok" "$o/cni.txt" && grep -q "inet 198\.51\.100\." "$o/cni.txt" &&
   grep -qE -- "-j DNAT --to-destination 198\.51\.100\.[0-9]+:80" "$o/cni.txt" && grep -qE -- "^-A CNI-[0-9a-f]+ .*-j MASQUERADE" "$o/cni.txt"' "$o/cni.txt"
check "CNI DEL removes the pod's chains" \
  'grep -qx "portmap DEL ok" "$o/cni.txt" && grep -qx "bridge DEL ok" "$o/cni.txt" &&
   sed -n "/^--- nat after DEL/,\$p" "$o/cni.txt" >"$tmp/nat-del.txt" && grep -qx -- "-N CNI-HOSTPORT-DNAT" "$tmp/nat-del.txt" &&
   ! grep -qE "^-N CNI-(DN-)?[0-9a-f]+$" "$tmp/nat-del.txt"' "$o/cni.txt"
check "tc: ingress qdisc + u32 mirred filter redirects a veth's packets to another veth" \
  'grep -qE "^u32: tbd received [1-9][0-9]* packets" "$o/tc.txt"' "$o/tc.txt"
check "tc: the same with a matchall filter" 'grep -qE "^matchall: tbd received [1-9][0-9]* packets" "$o/tc.txt"' "$o/tc.txt"

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
# The suite's budget (suite-run sets it below the outer VM's timeout): a test that no longer
# fits is failed by name, not started (run on the host: it never gets to need a guest).
mkdir -p "$tmp/suite"
HUSK_SUITE_BUDGET=20 HUSK_TESTBED_OUT="$tmp/suite" "$here/suite.sh" tests/agent/test-peer.sh >"$tmp/s.log" 2>&1; rs=$?
check "a test past the suite's budget is failed by name without running" '[ $rs != 0 ] && grep -q "test-peer.sh not run: .* of the suite.s 20 s are gone" "$tmp/s.log" && grep -qx "FAIL tests/agent/test-peer.sh" "$tmp/suite/suite.done" && ! grep -q "^--- " "$tmp/s.log"' "$tmp/s.log"
(cd /tmp && "$run" --vm -- true) >"$tmp/t.log" 2>&1; rt=$?
check "a working directory the outer VM would hide (/tmp) is refused (exit 125), saying why" '[ $rt = 125 ] && grep -q "below /tmp, which the outer VM covers" "$tmp/t.log"'
check "no temp dirs left" '[ -z "$(ls -A "$TMPDIR")" ]'
echo "testbed selftest: $pass passed, $fail failed"
[ $fail = 0 ]
