#!/usr/bin/env bash
# The CRI suite (tests/cri, husk-cri): what kubelet does, through containerd 1.6's CRI plugin,
# for the runtime handlers runc and husk in one run, and the leak check after each handler.
# Prints PASS/FAIL per case and handler; exits non-zero on any failure.
# CRI_HANDLERS=runc (or husk) runs one handler; CRI_CASES="logs oom" a subset.
# The run keeps within the testbed's per-test timeout (HUSK_TEST_TIMEOUT, default 900 s):
# cases that would start past it fail as not run, and the leak check still runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cri_setup
start=$(date +%s)
read -ra cases <<<"${CRI_CASES:-}"
budget=$(( ${HUSK_TEST_TIMEOUT:-900} - 150 ))
cri suite "${CRI_ARGS[@]}" --budget "$budget" --wait "${CRI_WAIT:-120}" --case-timeout 300 "${cases[@]}"
echo "test-cri: $(( $(date +%s) - start )) s for handlers $CRI_HANDLERS"
