#!/usr/bin/env bash
# Log URIs, as nerdctl -d and `ctr run --log-uri` use them: file:// gets both streams of the
# container, binary:// starts the logging binary with the container's stdout and stderr on
# descriptors 3 and 4 (and CONTAINER_ID / CONTAINER_NAMESPACE in its environment), as the runc
# shim does; a URI the shim cannot serve fails Create by name. Nothing is left after.
# Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/../e2e/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
run() { timeout "$T" ctr -a "$CTR_ADDR" run --runtime "$RUNTIME" "$@"; }

# 1. file://: both streams, appended, in a directory the shim makes.
log=$E2E_WORK/logs/deep/c1.log
run --rm --log-uri "file://$log" "$IMAGE" c1 sh -c 'echo to-stdout; echo to-stderr >&2' >/dev/null
assert_eq "to-stdout
to-stderr" "$(sort -r "$log")" "the file log of c1"
log "file:// log: ok"

# 2. binary://: a logging binary gets the streams on 3 and 4, its query as arguments.
logger=$E2E_WORK/logger
printf '%s\n' '#!/bin/sh' 'dir=$2' 'env >"$dir/env"' 'exec 5>&-' 'cat <&3 >"$dir/out" &' 'cat <&4 >"$dir/err" &' 'wait' >"$logger"
chmod +x "$logger"
mkdir -p "$E2E_WORK/bin-logs"
run -d --log-uri "binary://$logger?dir=$E2E_WORK/bin-logs" "$IMAGE" c2 sh -c 'echo out-line; echo err-line >&2' >/dev/null
for _ in $(seq 300); do
  [ "$(ctr_ task ls | awk '$1 == "c2" {print $3}')" = STOPPED ] && break
  sleep 1
done
ctr_ task delete c2 >/dev/null
ctr_ containers rm c2
for _ in $(seq 30); do [ -s "$E2E_WORK/bin-logs/err" ] && break; sleep 1; done
assert_eq "out-line" "$(cat "$E2E_WORK/bin-logs/out")" "stdout through the logging binary"
assert_eq "err-line" "$(cat "$E2E_WORK/bin-logs/err")" "stderr through the logging binary"
envs=$(cat "$E2E_WORK/bin-logs/env")
assert_contains "$envs" "CONTAINER_ID=c2" "the logging binary's environment"
assert_contains "$envs" "CONTAINER_NAMESPACE=default" "the logging binary's environment"
log "binary:// log: ok"

# 3. A logging binary that does not exist fails Create by name.
rc=0
out=$(run --rm --log-uri "binary://$E2E_WORK/no-such-logger" "$IMAGE" c3 true 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "a missing logging binary did not fail ctr run"
assert_contains "$out" "no-such-logger" "the error of a missing logging binary"
ctr_ containers rm c3 2>/dev/null || true
leak_check
log "PASS"
