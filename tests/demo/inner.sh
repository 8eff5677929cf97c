#!/usr/bin/env bash
# The demo's body, run where hardware KVM is (the testbed runs it): a private containerd with
# husk installed under PREFIX runs a locally built busybox image in a husk microVM and shows the
# guest kernel differs from the host's.
#   inner.sh PREFIX
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${1:?usage: inner.sh PREFIX}
. "$repo/tests/scripts/containerd-env.sh"
work=$(mktemp -d)
cleanup() { local rc=$?; containerd_stop; rm -rf "$work"; exit "$rc"; }
trap cleanup EXIT
export HUSK_CONFIG="$prefix/etc/husk/config.toml"
if [ "${HUSK_TESTBED:-}" = vm ]; then
  # Everything is emulated in the testbed: skip the guest's delay-loop calibration and give
  # the agent longer to answer. On real hardware the installed config is used as it is.
  sed -e 's/^cmdline = ""/cmdline = "lpj=4000000 tsc=reliable"/' -e 's/^boot_timeout_secs = .*/boot_timeout_secs = 600/' \
    "$HUSK_CONFIG" >"$work/config.toml"
  export HUSK_CONFIG="$work/config.toml"
fi
"$prefix/bin/husk" check || { echo "demo: husk check says this host cannot run husk" >&2; exit 1; }
containerd_start "$work/containerd" "$prefix/bin"
"$repo/tests/scripts/busybox-image.sh" "$work/busybox.tar"
ctr_ images import "$work/busybox.tar" >/dev/null
image=docker.io/library/husk-busybox:latest
echo "host kernel:  $(uname -r)"
start=$(date +%s%N)
out=$(ctr_ run --rm --runtime io.containerd.husk.v2 "$image" husk-demo \
  sh -c 'echo "Hello from a container in a husk microVM!"; echo "guest kernel: $(uname -r)"')
echo "$out"
echo "(ctr run took $(( ($(date +%s%N) - start) / 1000000 )) ms, emulated if in the testbed)"
want=$(cat "$prefix/share/husk/kernel.release" 2>/dev/null || cat "$repo/build/kernel/release")
grep -qx "guest kernel: $want" <<<"$out" || { echo "demo: expected guest kernel $want" >&2; exit 1; }
