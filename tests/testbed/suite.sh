#!/usr/bin/env bash
# Runs the tests that need a real guest, one outer VM for all of them (run it through
# tests/testbed/run). A test is an executable tests/<area>/test-*.sh; it passes by exiting 0.
#   suite.sh [--list] [FILTER...]   (FILTER: substrings of the test paths to run; default all;
#                                     --list prints the tests it would run)
# Per-test timeout: HUSK_TEST_TIMEOUT seconds (default 900), cut to what is left of
# HUSK_SUITE_BUDGET seconds for the whole run when that is set (suite-run sets it below the outer
# VM's timeout, so a test that hangs is timed out here, with the diagnostics below, rather than
# the outer VM killed with nothing said). Each finished test is recorded
# as "PASS|FAIL <test>" in $HUSK_TESTBED_OUT/suite.done (suite-run resumes from it).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
limit=${HUSK_TEST_TIMEOUT:-900}
budget=${HUSK_SUITE_BUDGET:-0}
suite_start=$(date +%s)
list=0
[ "${1:-}" = --list ] && { list=1; shift; }
mapfile -t all < <(find tests -mindepth 2 -maxdepth 2 -name 'test-*.sh' -perm -u+x | LC_ALL=C sort)
tests=()
for t in "${all[@]}"; do
  if (($#)); then
    for f in "$@"; do [[ "$t" == *"$f"* ]] && { tests+=("$t"); break; }; done
  else tests+=("$t"); fi
done
((${#tests[@]})) || { echo "suite: no test matched '$*'"; exit 1; }
((list)) && { printf '%s\n' "${tests[@]}"; exit 0; }
done_file=${HUSK_TESTBED_OUT:-/dev/null}/suite.done
[ -n "${HUSK_TESTBED_OUT:-}" ] || done_file=/dev/null
pass=0 fail=0 failed=()
for t in "${tests[@]}"; do
  echo "=== $t"
  s=$(date +%s)
  lim=$limit
  if ((budget > 0)); then
    left=$((budget - (s - suite_start)))
    if ((left < 30)); then
      echo "suite: $t not run: $((s - suite_start)) s of the suite's $budget s are gone"
      fail=$((fail + 1)); failed+=("$t"); echo "FAIL $t" >>"$done_file"
      continue
    fi
    ((left < lim)) && lim=$left
  fi
  # Shortly before the timeout, show what is still running (shims and VMMs are not the test's
  # children, so the timeout's kill does not reach them) and what the area's diagnose.sh, if
  # any, prints (logs the test's teardown will not get to show).
  (sleep $((lim > 60 ? lim - 20 : lim)) && echo "suite: $t still running after $((lim - 20)) s:" &&
    ps -eo pid,ppid,stat,wchan:22,etimes,args --sort=pid | grep -v ' ps -eo' | cut -c1-200 &&
    { d="$(dirname "$t")/diagnose.sh"; [ -x "$d" ] && "$d"; }) &
  wd=$!
  if HUSK_TEST_TIMEOUT=$lim timeout -k 10 "$lim" "$t"; then
    pass=$((pass + 1)); echo "--- PASS $t ($(( $(date +%s) - s )) s)"
    echo "PASS $t" >>"$done_file"
  else
    rc=$?; fail=$((fail + 1)); failed+=("$t")
    [ "$rc" = 124 ] && echo "suite: $t timed out after $lim s"
    echo "--- FAIL $t (exit $rc, $(( $(date +%s) - s )) s)"
    echo "FAIL $t" >>"$done_file"
  fi
  kids=$(pgrep -P "$wd"); kill "$wd" 2>/dev/null; wait "$wd" 2>/dev/null; kill $kids 2>/dev/null
done
((fail)) && printf 'failed: %s\n' "${failed[@]}"
echo "testbed: $pass passed, $fail failed"
((fail == 0))
