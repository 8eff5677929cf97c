#!/usr/bin/env bash
# Runs every benchmark: tests/<area>/bench*.sh. Each prints its figures as ratios against a peer
# measured in the same run. `make bench` runs this inside the testbed (real KVM); benchmarks
# that need no KVM run there too, so all figures of one report come from one machine state.
# A bench whose first lines say `# bench-where: host` needs no KVM and runs on the host.
#   bench.sh [--where host|testbed] [FILTER...]
set -uo pipefail
where=""
if [ "${1:-}" = --where ]; then where=$2; shift 2; fi
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mapfile -t all < <(find tests -mindepth 2 -maxdepth 2 -name 'bench*.sh' -perm -u+x | LC_ALL=C sort)
rc=0 ran=0
for b in "${all[@]}"; do
  w=testbed; head -5 "$b" | grep -q '^# bench-where: host' && w=host
  [ -n "$where" ] && [ "$w" != "$where" ] && continue
  if (($#)); then m=0; for f in "$@"; do [[ "$b" == *"$f"* ]] && m=1; done; ((m)) || continue; fi
  echo "=== $b"
  ran=$((ran + 1))
  "$b" || { echo "--- $b failed (exit $?)"; rc=1; }
done
((ran)) || { echo "bench: no benchmark matched"; exit 1; }
exit $rc
