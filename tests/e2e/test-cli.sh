#!/usr/bin/env bash
# The husk CLI: `husk check` tells whether the host can run husk (exit 1 and the reason when not),
# `husk ps` lists a running VM, `husk logs` prints its console. The ps/logs part boots one VM and
# runs only where hardware virtualization is available.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
husk() { "$HUSK_BIN_DIR/husk" --config "$HUSK_CONFIG" "$@"; }

rc=0; out=$(husk check) || rc=$?
echo "$out" >&2
# The verdict and the exit code agree with the items; without vmx/svm the cpu item fails.
if grep -q '^FAIL' <<<"$out"; then
  assert_eq 1 "$rc" "exit code with FAIL items"
  assert_contains "$out" "this host cannot run husk" "verdict"
else
  assert_eq 0 "$rc" "exit code without FAIL items"
  assert_contains "$out" "this host can run husk" "verdict"
fi
if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  grep -q '^FAIL cpu' <<<"$out" || fail "husk check did not flag the missing vmx/svm"
fi
# A configuration naming a missing kernel: check fails and names it.
sed "s|^kernel = .*|kernel = \"/nonexistent/vmlinux\"|" "$HUSK_CONFIG" >"$E2E_WORK/bad.toml"
rc=0; out=$("$HUSK_BIN_DIR/husk" --config "$E2E_WORK/bad.toml" check) || rc=$?
assert_eq 1 "$rc" "check with a missing kernel"
assert_contains "$out" "/nonexistent/vmlinux" "check names the kernel"
log "husk check: ok"

assert_eq "POD" "$(husk ps | awk 'NR==1{print $1}')" "ps header"
rc=0; husk logs nope 2>/dev/null || rc=$?
[ "$rc" != 0 ] || fail "husk logs of an unknown VM succeeded"

if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  timeout 600 ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" cli-1 sleep 100000 >/dev/null
  line=$(husk ps | grep '^cli-1 ')
  assert_contains "$line" "running" "husk ps"
  # The pod's containers are listed below it: here the one container, on the boot disk.
  assert_contains "$(husk ps | grep -A1 '^cli-1 ' | tail -1)" "boot disk" "husk ps lists the container"
  [ -s "$E2E_WORK/run-husk/default/cli-1/jail/run/console.log" ] && { husk logs cli-1 | head -3 >&2; }
  husk logs cli-1 >/dev/null
  ctr_ task kill -s SIGKILL cli-1
  timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep cli-1 | grep -q STOPPED; do sleep 0.5; done"
  ctr_ task rm cli-1 >/dev/null
  ctr_ containers rm cli-1
  # Below the header only the image cache's line is left (what the cache holds, its bound).
  after=$(husk ps | tail -n +2)
  assert_contains "$after" "image cache $E2E_WORK/images: " "husk ps after delete"
  [ -z "$(echo "$after" | grep -v '^image cache ')" ] || fail "husk ps still lists a VM after delete: $after"
  leak_check
  log "husk ps/logs: ok"
fi
