#!/usr/bin/env bash
# Differential: the same ctr runs under runc and under husk give the same stdout, stderr and
# exit code. Needs hardware KVM (tests/testbed/run). 9 VM boots.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-240}
n=0
diffs=()
differ() { diffs+=("$1"); log "DIFFERENT: $1"; }
same() { # CMP-STDERR(0|1) STDIN-TEXT CTR-RUN-ARGS...
  local cmp_err=$1 input=$2; shift 2
  n=$((n + 1))
  local r rt rc
  declare -A code
  for r in runc husk; do
    rt=io.containerd.runc.v2; [ "$r" = husk ] && rt=$RUNTIME
    local try
    for try in 1 2; do
      rc=0
      # -k: ctr forwards SIGTERM to the container, whose init may ignore it. Empty input is
      # /dev/null, as in test-run.sh (an empty pipe was seen to leave ctr 1.6 hanging).
      if [ -n "$input" ]; then
        printf '%s' "$input" | timeout -k 10 "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$rt" "$@" \
          >"$E2E_WORK/$r.out" 2>"$E2E_WORK/$r.err" || rc=$?
      else
        timeout -k 10 "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$rt" "$@" </dev/null \
          >"$E2E_WORK/$r.out" 2>"$E2E_WORK/$r.err" || rc=$?
      fi
      ctr -a "$CTR_ADDR" tasks kill -s KILL "${@: -1}" >/dev/null 2>&1 || true
      ctr -a "$CTR_ADDR" tasks rm -f "${@: -1}" >/dev/null 2>&1 || true
      ctr -a "$CTR_ADDR" containers rm "${@: -1}" >/dev/null 2>&1 || true
      [ "$rc" = 124 ] || [ "$rc" = 137 ] || break
      log "case $n: ctr run under $r hung for $T s (try $try)"
    done
    code[$r]=$rc
  done
  local before=${#diffs[@]}
  [ "${code[runc]}" = "${code[husk]}" ] || differ "case $n ($*): exit runc ${code[runc]}, husk ${code[husk]} (husk stderr: $(head -c 300 "$E2E_WORK/husk.err"))"
  cmp -s "$E2E_WORK/runc.out" "$E2E_WORK/husk.out" || differ "case $n ($*): stdout differs: $(diff "$E2E_WORK/runc.out" "$E2E_WORK/husk.out" | head -c 400)"
  if [ "$cmp_err" = 1 ]; then
    cmp -s "$E2E_WORK/runc.err" "$E2E_WORK/husk.err" || differ "case $n ($*): stderr differs: runc [$(head -c 300 "$E2E_WORK/runc.err")] husk [$(head -c 300 "$E2E_WORK/husk.err")]"
  fi
  [ "${#diffs[@]}" != "$before" ] || log "case $n: same (exit ${code[husk]})"
}
same 1 "" "$IMAGE" d1 sh -c 'echo out; echo err >&2; ls / | sort'
same 1 "" "$IMAGE" d2 sh -c 'exit 42'
same 1 "" "$IMAGE" d3 sh -c 'kill -TERM $$; echo survived'
same 1 "" --env A=1 --cwd /etc "$IMAGE" d4 sh -c 'echo "$A $(pwd) $(id)"; env | sort'
# No stdin case here: with containerd 1.6.20's ctr, runc never sees EOF on piped stdin
# (`seq 3 | ctr run ... sh -c 'cat | wc -l'` hangs under runc on this host), so there is no
# reference to compare with. husk's stdin, EOF included, is checked in test-run.sh.
# A missing executable: both fail (ctr's message differs by runtime, the exit code must not).
same 0 "" "$IMAGE" d6 /bin/does-not-exist
# linux.seccomp: containerd's default profile (what CRI's RuntimeDefault also gives) refuses
# unshare -U and lets ordinary commands run; a custom profile's ERRNO with errnoRet (mkdir →
# ENOSPC) and an argument rule (kill with signal 15 → EPERM, other signals pass).
same 1 "" --seccomp "$IMAGE" d7 sh -c 'unshare -U true; echo "unshare $?"; ls / | wc -l; grep "^Seccomp:" /proc/self/status'
cat >"$E2E_WORK/seccomp-custom.json" <<'JSON'
{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": [
  {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28},
  {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]}]}
JSON
same 1 "" --seccomp --seccomp-profile "$E2E_WORK/seccomp-custom.json" "$IMAGE" d8 \
  sh -c 'mkdir /tmp/x; echo "mkdir $?"; kill -TERM $$; echo "kill TERM $?"; kill -0 $$; echo "kill 0 $?"'
# Devices: ctr's rules deny every device but runc's defaults; mknod is allowed, opening the
# node made is not (/dev/mem, /dev/tty1) unless a rule allows it (a second /dev/null).
# --device makes a linux.devices node with the host's type, numbers and mode (opening
# /dev/kmsg is left out: it depends on the kernel's dmesg_restrict, not on husk).
same 1 "" "$IMAGE" d9 sh -c 'mknod /dev/m c 1 1; echo "mknod $?"; true </dev/m; echo "mem $?"; true </dev/null; echo "null $?"'
same 1 "" --device /dev/kmsg "$IMAGE" d10 sh -c 'stat -c "%F %t:%T %a %u:%g" /dev/kmsg; mknod /dev/n2 c 1 3; echo hi >/dev/n2; echo "null2 $?"; mknod /dev/t1 c 4 1; true </dev/t1; echo "tty1 $?"'
leak_check
((${#diffs[@]} == 0)) || fail "${#diffs[@]} differences from runc in $n cases: $(printf '\n  %s' "${diffs[@]}")"
log "test-diff-runc: $n cases identical"
