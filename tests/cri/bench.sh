#!/usr/bin/env bash
# Pod benchmarks through CRI (needs hardware KVM: run inside tests/testbed/run), husk against
# runc in the same run: pod start (RunPodSandbox + CreateContainer + StartContainer until the
# container runs) and a second container joining a running pod, medians of HUSK_BENCH_RUNS
# (default 5) with the husk/runc ratio; host PSS of an idle pod of one and of three containers.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cri_setup
cri bench "${CRI_ARGS[@]}" --runs "${HUSK_BENCH_RUNS:-5}"
