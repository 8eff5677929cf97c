#!/usr/bin/env bash
# The CRI suite (tests/cri, husk-cri): what kubelet does, through containerd 1.6's CRI plugin,
# for the runtime handlers runc and husk in one run, and the leak check after each handler.
# Prints PASS/FAIL per case and handler; exits non-zero on any failure.
# CRI_HANDLERS=runc (or husk) runs one handler; CRI_CASES="logs oom" a subset.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cri_setup
start=$(date +%s)
read -ra cases <<<"${CRI_CASES:-}"
cri suite "${CRI_ARGS[@]}" "${cases[@]}"
echo "test-cri: $(( $(date +%s) - start )) s for handlers $CRI_HANDLERS"
