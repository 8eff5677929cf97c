#!/usr/bin/env bash
# tests/cri/bench.sh with [vm] templates = true: pod start when every pod's VM is restored from
# a template VM instead of booting (the first round makes the template: the median takes
# the rounds after it), against runc in the same run; the idle pods' host memory as restored
# VMs hold it.
set -euo pipefail
HUSK_TEMPLATES=true exec "$(dirname "$0")/bench.sh"
