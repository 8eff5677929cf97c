#!/usr/bin/env bash
# Runs every cargo-fuzz target of the project (microvm/fuzz: virtio devices and the control
# API's request parser; guest-agent/fuzz: agent request parsing) for SECONDS each (default 10),
# starting from the seeds in <dir>/seeds/<target>/ and with the dictionary <dir>/<target>.dict
# where a target has them. Installs cargo-fuzz when missing.
# No nightly toolchain can be fetched on these machines: RUSTC_BOOTSTRAP=1 lets the stable
# compiler accept the -Z flags cargo-fuzz passes (sanitizer, coverage instrumentation).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${HUSK_FUZZ_TARGET_DIR:-$repo/target/fuzz}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
pass=0 fail=0
for dir in microvm/fuzz guest-agent/fuzz; do
  cd "$repo/$dir"
  cargo fuzz build -O >/dev/null
  for t in $(cargo fuzz list); do
    mkdir -p "$CARGO_TARGET_DIR/corpus/$dir/$t"
    corpora=("$CARGO_TARGET_DIR/corpus/$dir/$t") extra=()
    [ -d "$repo/$dir/seeds/$t" ] && corpora+=("$repo/$dir/seeds/$t")
    [ -f "$repo/$dir/$t.dict" ] && extra+=(-dict="$repo/$dir/$t.dict")
    if cargo fuzz run -O "$t" "${corpora[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 "${extra[@]}" >"$CARGO_TARGET_DIR/$t.log" 2>&1; then
      pass=$((pass + 1)); echo "ok: fuzz $dir $t ($(grep -aoE 'Done [0-9]+ runs' "$CARGO_TARGET_DIR/$t.log" | tail -1))"
    else
      fail=$((fail + 1)); echo "FAIL: fuzz $dir $t"; tail -30 "$CARGO_TARGET_DIR/$t.log"
    fi
  done
done
echo "fuzz: $pass passed, $fail failed"
((fail == 0))
