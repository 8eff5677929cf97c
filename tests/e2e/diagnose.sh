#!/usr/bin/env bash
# Prints what a hung e2e test leaves to look at (suite.sh runs it shortly before the test's
# timeout, when the test's own teardown will not get to print it): the tail of each e2e
# containerd log (shim messages included) and of each husk VM's console and VMM log.
for d in "${TMPDIR:-/tmp}"/husk-e2e.*; do
  [ -d "$d" ] || continue
  echo "--- $d/ctrd/containerd.log (tail)"; tail -n 60 "$d/ctrd/containerd.log" 2>/dev/null
  for f in "$d"/run-husk/*/*/jail/run/console.log "$d"/run-husk/*/*/vmm.log; do
    [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 30 "$f"; }
  done
done
