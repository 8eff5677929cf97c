# Sourced by tests/cri/test-cri.sh and tests/cri/bench.sh: a private containerd with the CRI
# plugin (runtime handlers runc and husk, CNI bridge, cgroupfs), the busybox app image and the
# pause sandbox image imported into its k8s.io namespace, and the husk-cri client.
#
# Binaries as in tests/e2e/lib.sh (HUSK_BIN_DIR, HUSK_VMM, HUSK_KERNEL, HUSK_INITRAMFS), plus
# CRI_BIN (husk-cri) and CRI_PAUSE_BIN (the static pause), built by tests/cri/build.sh.
# CRI_HANDLERS (default runc,husk) chooses the handlers husk-cri runs.
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
CRI_BIN=${CRI_BIN:-$E2E_REPO/target/cri/release/husk-cri}
CRI_PAUSE_BIN=${CRI_PAUSE_BIN:-$E2E_REPO/target/cri/x86_64-unknown-linux-musl/release/pause}
CRI_HANDLERS=${CRI_HANDLERS:-runc,husk}
export CRI_HANDLERS
PAUSE_IMAGE=localhost/husk-cri/pause:1
# Pod names, UIDs and cgroups of this run carry it.
CRI_RUN=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')

cri() { "$CRI_BIN" --socket "$CTR_ADDR" "$@"; }

# Imports an image tar into the k8s.io namespace. containerd 1.6 with the CRI plugin now and
# then fails an import with "content digest <the manifest>: not found" (seen 1 in ~20 here):
# up to 3 tries, each failure said.
cri_import() {
  local i
  for i in 1 2 3; do
    ctr_ -n k8s.io images import "$1" >/dev/null && return 0
    echo "cri: importing $1 failed (try $i of 3)" >&2
    sleep 1
  done
  return 1
}

cri_setup() {
  [ -x "$CRI_BIN" ] && [ -x "$CRI_PAUSE_BIN" ] || fail "no $CRI_BIN or $CRI_PAUSE_BIN (run tests/cri/build.sh)"
  if [[ ",$CRI_HANDLERS," == *,husk,* ]]; then
    [ -x "$HUSK_BIN_DIR/containerd-shim-husk-v2" ] || fail "no $HUSK_BIN_DIR/containerd-shim-husk-v2 (set HUSK_BIN_DIR or make build)"
  fi
  E2E_WORK=$(mktemp -d "${TMPDIR:-/tmp}/husk-cri.XXXXXX")
  trap cri_teardown EXIT
  write_husk_config
  containerd_start_cri "$E2E_WORK/ctrd" "$PAUSE_IMAGE" "$E2E_WORK/husk.toml" "$HUSK_BIN_DIR" >&2
  "$E2E_REPO/tests/scripts/busybox-image.sh" "$E2E_WORK/busybox.tar" "$IMAGE"
  "$E2E_REPO/tests/cri/pause-image.sh" "$CRI_PAUSE_BIN" "$E2E_WORK/pause.tar" "$PAUSE_IMAGE"
  cri_import "$E2E_WORK/busybox.tar"
  cri_import "$E2E_WORK/pause.tar"
  cri wait-ready >&2
  CRI_ARGS=(--work "$E2E_WORK" --run "$CRI_RUN" --image "$IMAGE" --containerd-pidfile "$E2E_WORK/ctrd/containerd.pid"
    --watch "$E2E_WORK/ctrd/root" --watch "$E2E_WORK/ctrd/state" --husk-state-dir "$E2E_WORK/run-husk" --bridge "$CTRD_BRIDGE")
}

# The pod cgroups of this run (kubelet's cgroupfs layout), deepest first.
cri_cgroups() { find /sys/fs/cgroup -depth -type d -path "*/kubepods/besteffort/pod$CRI_RUN-*" 2>/dev/null; }

cri_teardown() {
  local rc=$? d p f
  set +e
  if [ "$rc" != 0 ] && [ -n "${E2E_WORK:-}" ]; then
    echo "--- containerd log, shims' output included: errors and warnings (last 150)"
    grep -E 'level=(error|warning|fatal)' "$E2E_WORK/ctrd/containerd.log" | tail -150
    echo "--- containerd log (last 80 lines)"; tail -80 "$E2E_WORK/ctrd/containerd.log"
    for f in "$E2E_WORK"/run-husk/*/*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -40 "$f"; }; done
  fi >&2
  # CRI_KEEP_LOG=FILE keeps containerd's log (the shims' output included) for reading later.
  [ -n "${CRI_KEEP_LOG:-}" ] && [ -n "${E2E_WORK:-}" ] && cp "$E2E_WORK/ctrd/containerd.log" "$CRI_KEEP_LOG"
  if [ -n "${CTRD_LOOP:-}" ]; then
    cri cleanup --run "$CRI_RUN" >&2
    containerd_stop
  fi
  # What a failed run left in its pod cgroups (ours by name), then the cgroups kubelet removes.
  for d in $(cri_cgroups); do
    for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for d in $(cri_cgroups); do rmdir "$d" 2>/dev/null; done
  for d in /sys/fs/cgroup/kubepods/besteffort /sys/fs/cgroup/*/kubepods/besteffort /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null
  done
  [ -n "${E2E_WORK:-}" ] && rm -rf "$E2E_WORK"
  exit "$rc"
}
