#!/usr/bin/env bash
# `make demo`: installs husk into a private prefix (build/demo) and runs a container in a microVM
# through a private containerd, inside the testbed when this host has no hardware virtualization.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
prefix="$repo/build/demo"
make -s -C "$repo" install PREFIX="$prefix" SYSCONFDIR="$prefix/etc" >/dev/null
exec "$repo/tests/testbed/run" --timeout 900 -- "$repo/tests/demo/inner.sh" "$prefix"
