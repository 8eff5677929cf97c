#!/usr/bin/env bash
# `ctr run` with the husk runtime behaves like runc with a VM around it: output, exit codes,
# env/cwd, large stdout, stdin, exec, kill, pause/resume, ps, metrics, a terminal; nothing
# left behind. Needs hardware KVM (run inside tests/testbed/run). 9 VM boots.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
run() { timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$@"; }
rc_of() { local rc=0; "$@" >/dev/null 2>&1 || rc=$?; echo "$rc"; }

# 1. echo, exit 0
out=$(run "$IMAGE" r-echo echo hello from husk)
assert_eq "hello from husk" "$out" "echo output"
log "echo: ok"

# 2. exit codes as runc reports them: 1, and 128+9 for SIGKILL
assert_eq 1 "$(rc_of run "$IMAGE" r-exit1 sh -c 'exit 1')" "exit 1"
# (A pid-namespace init ignores SIGKILL from inside, as under runc: kill it from outside.)
rc=0
run "$IMAGE" r-kill9 sleep 100000 >/dev/null 2>&1 &
run_pid=$!
timeout 300 sh -c "until ctr -a '$CTR_ADDR' task ls | grep r-kill9 | grep -q RUNNING; do sleep 0.3; done"
ctr_ task kill -s SIGKILL r-kill9
wait "$run_pid" || rc=$?
assert_eq 137 "$rc" "killed by SIGKILL"
log "exit codes 1/137: ok"

# 3. env from the image config and from flags, cwd from the image config and from flags
out=$(run --env FOO=bar "$IMAGE" r-env sh -c 'echo "$FOO|$(pwd)|$(id -u):$(id -g)|$PATH"')
assert_eq "bar|/|0:0|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$out" "env/cwd/user from image"
out=$(run --cwd /tmp "$IMAGE" r-cwd pwd)
assert_eq "/tmp" "$out" "cwd flag"
log "env/cwd: ok"

# 4. a large stdout (4 MB) arrives complete and in order; stderr stays separate
run "$IMAGE" r-big sh -c 'yes husk-line | head -c 4000000; echo to-stderr >&2' >"$E2E_WORK/big.out" 2>"$E2E_WORK/big.err"
assert_eq "$(yes husk-line | head -c 4000000 | md5sum)" "$(md5sum <"$E2E_WORK/big.out")" "4 MB stdout"
assert_eq "to-stderr" "$(cat "$E2E_WORK/big.err")" "stderr"
log "large stdout: ok"

# 5. stdin piped in, to EOF
out=$(seq 1 20000 | run "$IMAGE" r-stdin md5sum)
assert_eq "$(seq 1 20000 | md5sum)" "$out" "stdin md5"
log "stdin: ok"

# 6. a long-running container: exec, ps, metrics, pause/resume, kill
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" r-long sleep 100000 >/dev/null
out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e1 r-long echo in-exec)
assert_eq "in-exec" "$out" "exec output"
assert_eq 3 "$(rc_of timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e2 r-long sh -c 'exit 3')" "exec exit code"
out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e3 r-long cat <<<"exec-stdin")
assert_eq "exec-stdin" "$out" "exec stdin"
out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e4 --user 1000 --cwd /home/user r-long sh -c 'echo "$(id -u) $(pwd)"' </dev/null)
assert_eq "1000 /home/user" "$out" "exec user and cwd"
# Free page reporting: the agent gave the guest kernel the configured reporting order (5, the
# default), and a VM booted with it holds less guest RAM on the host at idle than one whose guest
# reports only Linux's own 2 MiB blocks (order 9, through ConfigPath), as the pages the kernel
# frees at boot go back. Both boot (templates = false): what a VM restored from a template holds
# is what its template had reported when it was saved. Resident guest RAM is the Rss of
# husk-vmm's guest-RAM mapping in /proc.
assert_eq 5 "$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e5 r-long cat /sys/module/page_reporting/parameters/page_reporting_order)" "page reporting order in the guest"
sed 's/^templates = .*$/templates = false/' "$HUSK_CONFIG" >"$E2E_WORK/husk-order5.toml"
sed 's/^\[vm\]$/[vm]\npage_reporting_order = 9/' "$E2E_WORK/husk-order5.toml" >"$E2E_WORK/husk-order9.toml"
for o in 5 9; do
  timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --runtime-config-path "$E2E_WORK/husk-order$o.toml" "$IMAGE" "r-order$o" sleep 100000 >/dev/null
  assert_eq "$o" "$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e1 "r-order$o" cat /sys/module/page_reporting/parameters/page_reporting_order)" "order from ConfigPath"
done
vmm5=$(vmm_of r-order5) vmm9=$(vmm_of r-order9)
[ -n "$vmm5" ] && [ -n "$vmm9" ] || fail "no husk-vmm found for r-order5 ($vmm5) or r-order9 ($vmm9)"
! tr '\0' ' ' <"/proc/$vmm5/cmdline" | grep -q -- --restore || fail "r-order5 was restored from a template with templates = false"
guest_rss_kib() { # resident guest RAM of husk-vmm pid $1
  awk '/^[0-9a-f]+-[0-9a-f]+ / { m = ($0 ~ /\/memfd:husk-guest-ram/) ; next } m && /^Rss:/ { kb += $2 } END { print kb + 0 }' "/proc/$1/smaps"
}
# Reports start 2 s after memory is freed: wait up to 30 s for a gap of 3 MiB (6.5 were seen).
for ((i = 0; i < 30; i++)); do
  r5=$(guest_rss_kib "$vmm5") r9=$(guest_rss_kib "$vmm9")
  ((r5 > 0 && r9 > 0 && r9 - r5 >= 3072)) && break
  sleep 1
done
((r5 > 0 && r9 > 0 && r9 - r5 >= 3072)) || fail "idle guest RAM resident: order 5 $r5 KiB, order 9 $r9 KiB (expected at least 3 MiB less with 5)"
log "page reporting order 5 in the guest; idle guest RAM resident $((r5 / 1024)) MiB, with order 9 $((r9 / 1024)) MiB: ok"
for o in 5 9; do
  ctr_ task kill -s SIGKILL "r-order$o"
  timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep r-order$o | grep -q STOPPED; do sleep 0.5; done"
  ctr_ task rm "r-order$o" >/dev/null
  ctr_ containers rm "r-order$o"
done
ps_out=$(ctr_ task ps r-long)
[ "$(tail -n +2 <<<"$ps_out" | wc -l)" -ge 1 ] || fail "task ps lists no process: $ps_out"
metrics=$(ctr_ task metrics r-long)
assert_contains "$metrics" "memory" "metrics"
ctr_ task pause r-long
assert_contains "$(ctr_ task ls)" "PAUSED" "paused state"
ctr_ task resume r-long
assert_contains "$(ctr_ task ls | grep r-long)" "RUNNING" "resumed state"
ctr_ task kill -s SIGKILL r-long
st=$(timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep r-long | grep -q STOPPED; do sleep 0.5; done; echo stopped") || true
assert_eq stopped "$st" "killed container stops"
ctr_ task rm r-long >/dev/null
ctr_ containers rm r-long
log "exec/ps/metrics/pause/resume/kill: ok"

# 7. a terminal: ctr run -t gets a tty in the guest
if command -v script >/dev/null; then
  out=$(timeout "$T" script -qec "ctr -a '$CTR_ADDR' run -t --rm --runtime '$RUNTIME' '$IMAGE' r-tty sh -c 'test -t 0 && test -t 1 && echo is-a-tty'" /dev/null | tr -d '\r')
  assert_contains "$out" "is-a-tty" "terminal"
  log "terminal: ok"
fi

leak_check
log "test-run: all passed"
