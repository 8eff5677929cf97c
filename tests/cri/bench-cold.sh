#!/usr/bin/env bash
# tests/cri/bench.sh with [vm] templates = false: pod start when every pod's VM boots a kernel
# (tests/cri/bench.sh measures the default, VMs restored from a template), against runc in the
# same run; the idle pods' host memory as booted VMs hold it.
set -euo pipefail
HUSK_TEMPLATES=false exec "$(dirname "$0")/bench.sh"
