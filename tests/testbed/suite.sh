#!/usr/bin/env bash
# Runs the tests that need a real guest, one outer VM for all of them (run it through
# tests/testbed/run). A test is an executable tests/<area>/test-*.sh; it passes by exiting 0.
#   suite.sh [FILTER...]     (FILTER: substrings of the test paths to run; default all)
# Per-test timeout: HUSK_TEST_TIMEOUT seconds (default 900).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
limit=${HUSK_TEST_TIMEOUT:-900}
mapfile -t all < <(find tests -mindepth 2 -maxdepth 2 -name 'test-*.sh' -perm -u+x | LC_ALL=C sort)
tests=()
for t in "${all[@]}"; do
  if (($#)); then
    for f in "$@"; do [[ "$t" == *"$f"* ]] && { tests+=("$t"); break; }; done
  else tests+=("$t"); fi
done
((${#tests[@]})) || { echo "suite: no test matched '$*'"; exit 1; }
pass=0 fail=0 failed=()
for t in "${tests[@]}"; do
  echo "=== $t"
  s=$(date +%s)
  if timeout -k 10 "$limit" "$t"; then
    pass=$((pass + 1)); echo "--- PASS $t ($(( $(date +%s) - s )) s)"
  else
    rc=$?; fail=$((fail + 1)); failed+=("$t")
    [ "$rc" = 124 ] && echo "suite: $t timed out after $limit s"
    echo "--- FAIL $t (exit $rc, $(( $(date +%s) - s )) s)"
  fi
done
((fail)) && printf 'failed: %s\n' "${failed[@]}"
echo "testbed: $pass passed, $fail failed"
((fail == 0))
