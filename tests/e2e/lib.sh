# Sourced by the husk end-to-end tests: a private containerd with the husk shim on its PATH,
# a husk configuration scoped to a temp dir (state, image cache), the busybox test image.
#
# Binaries: HUSK_BIN_DIR (containerd-shim-husk-v2, husk; default target/release),
# HUSK_VMM (default $HUSK_BIN_DIR/husk-vmm), HUSK_KERNEL (build/kernel/vmlinux),
# HUSK_INITRAMFS (build/initramfs.cpio). HUSK_BOOT_TIMEOUT: seconds for the agent to answer.
# Every test calls e2e_setup first; e2e_teardown runs on exit and kills only what this run
# started (containerd, and every process whose command line names this run's directory:
# shims, VMMs), found in /proc.
set -euo pipefail
E2E_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HUSK_BIN_DIR=${HUSK_BIN_DIR:-$E2E_REPO/target/release}
HUSK_VMM=${HUSK_VMM:-$HUSK_BIN_DIR/husk-vmm}
HUSK_KERNEL=${HUSK_KERNEL:-$E2E_REPO/build/kernel/vmlinux}
HUSK_INITRAMFS=${HUSK_INITRAMFS:-$E2E_REPO/build/initramfs.cpio}
RUNTIME=io.containerd.husk.v2
IMAGE=docker.io/library/husk-busybox:latest
. "$E2E_REPO/tests/scripts/containerd-env.sh"

log() { echo "e2e: $*" >&2; }
fail() { echo "e2e: FAIL: $*" >&2; exit 1; }
assert_eq() { # WANT GOT WHAT
  [ "$1" == "$2" ] || fail "$3: expected [$1], got [$2]"
}
assert_contains() { # HAYSTACK NEEDLE WHAT
  [[ "$1" == *"$2"* ]] || fail "$3: [$1] does not contain [$2]"
}

# husk configuration for this run: write_config [KEY=VALUE overrides as TOML lines under sections]
write_husk_config() {
  local kernel=${1:-$HUSK_KERNEL}
  cat >"$E2E_WORK/husk.toml" <<TOML
[vm]
kernel = "$kernel"
initramfs = "$HUSK_INITRAMFS"
vcpus = 1
memory = "${HUSK_MEMORY:-256M}"
cmdline = "${HUSK_EXTRA_CMDLINE:-lpj=4000000 tsc=reliable}"
templates = ${HUSK_TEMPLATES:-true}

[shim]
vmm = "$HUSK_VMM"
state_dir = "$E2E_WORK/run-husk"
image_cache_dir = "$E2E_WORK/images"
image_work_dir = "$E2E_WORK/work"
boot_timeout_secs = ${HUSK_BOOT_TIMEOUT:-600}
TOML
}

# The annotations containerd's CRI plugin puts on a pod's containers (the shim groups by them).
SB=io.kubernetes.cri.sandbox-id
CT=io.kubernetes.cri.container-type

e2e_setup() {
  [ -x "$HUSK_BIN_DIR/containerd-shim-husk-v2" ] || fail "no $HUSK_BIN_DIR/containerd-shim-husk-v2 (set HUSK_BIN_DIR or make build)"
  E2E_WORK=$(mktemp -d "${TMPDIR:-/tmp}/husk-e2e.XXXXXX")
  trap e2e_teardown EXIT
  write_husk_config
  export HUSK_CONFIG="$E2E_WORK/husk.toml"
  containerd_start "$E2E_WORK/ctrd" "$HUSK_BIN_DIR" >&2
  "$E2E_REPO/tests/scripts/busybox-image.sh" "$E2E_WORK/busybox.tar" "$IMAGE"
  ctr_ images import "$E2E_WORK/busybox.tar" >/dev/null
}

# Pids of live processes (not zombies) other than containerd whose command line names this
# run's directory: shims (-address), husk-vmm (--config), virtiofsd. Read from /proc (pgrep, one
# process: a fork per /proc entry costs seconds in the testbed), not from husk's own state files,
# which the cleanup under test removes.
e2e_pids() {
  local pid st
  for pid in $(pgrep -f -- "$E2E_WORK"); do
    [ "$pid" = "${CTRD_PID:-}" ] || [ "$pid" = $$ ] || [ "$pid" = "${BASHPID:-}" ] && continue
    read -r st 2>/dev/null <"/proc/$pid/stat" || continue
    [[ "$st" == *") Z "* ]] || echo "$pid"
  done
  return 0
}

# vmm_of ID: the pid of sandbox ID's husk-vmm in the default namespace, from /proc (its argv[0]
# is in the sandbox's jail); nothing if there is none.
vmm_of() {
  local p comm arg0
  for p in $(e2e_pids); do
    read -r comm 2>/dev/null <"/proc/$p/comm" && [ "$comm" = husk-vmm ] || continue
    IFS= read -r -d '' arg0 2>/dev/null <"/proc/$p/cmdline" || continue
    [[ "$arg0" == *"$E2E_WORK/run-husk/default/$1/jail/"* ]] && echo "$p"
  done
  return 0
}

e2e_teardown() {
  local rc=$? p m
  set +e
  if [ "$rc" != 0 ] && [ -n "${E2E_WORK:-}" ]; then
    echo "--- containerd log (tail)"; tail -40 "$E2E_WORK/ctrd/containerd.log" 2>/dev/null
    for f in "$E2E_WORK"/run-husk/*/*/jail/run/console.log "$E2E_WORK"/run-husk/*/*/vmm.log; do
      [ -f "$f" ] && { echo "--- $f (tail)"; tail -20 "$f"; }
    done
  fi >&2
  # E2E_KEEP_LOG=FILE keeps containerd's log (the shims' timelines included) for reading later.
  [ -n "${E2E_KEEP_LOG:-}" ] && [ -n "${E2E_WORK:-}" ] && cp "$E2E_WORK/ctrd/containerd.log" "$E2E_KEEP_LOG" 2>/dev/null
  if [ -n "${CTRD_PID:-}" ]; then
    for p in $(e2e_pids); do [ "$p" -gt 1 ] 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    kill "$CTRD_PID" 2>/dev/null; wait "$CTRD_PID" 2>/dev/null
    for m in $(awk -v d="$E2E_WORK" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
    CTRD_PID=""
  fi
  [ -n "${E2E_WORK:-}" ] && rm -rf "$E2E_WORK"
  exit "$rc"
}

# The uid range of jailed VMMs ([jail] of husk's configuration; the defaults here).
JAIL_UID_FIRST=${JAIL_UID_FIRST:-1879048192}
JAIL_UID_COUNT=${JAIL_UID_COUNT:-65536}
# "pid:uid" of every process running as a uid of the jail range, from /proc (ps: real uids).
jail_uid_processes() {
  ps -e -o pid=,ruid= | awk -v f="$JAIL_UID_FIRST" -v n="$JAIL_UID_COUNT" '$2 >= f && $2 < f + n {print $1 ":" $2}'
}

# Fails if anything of a deleted container is left, counted from the system: processes of
# this run (shims, VMMs) in /proc and processes running as a jail uid, mounts below this run's
# directory in /proc/self/mounts, loop devices backed by its files in /sys/block; then husk's
# state dir (the jail's uid locks included) and containerd's bundles.
leak_check() {
  local left p
  for p in $(e2e_pids); do
    fail "process $p ($(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")) still running"
  done
  left=$(jail_uid_processes)
  [ -z "$left" ] || fail "processes still run as jail uids (pid:uid): $left"
  left=$(awk -v d="$E2E_WORK/" 'index($2, d) == 1 {print $2}' /proc/self/mounts)
  [ -z "$left" ] || fail "mounts left: $left"
  left=$(grep -ls -- "$E2E_WORK" /sys/block/loop*/loop/backing_file 2>/dev/null || true)
  [ -z "$left" ] || fail "loop devices left: $left"
  left=$(ls -A "$E2E_WORK/run-husk" 2>/dev/null || true)
  [ -z "$left" ] || fail "husk state left behind: $left"
  # Containers' own images: <work>/<namespace>/<sandbox>/ (image_work_dir).
  left=$(find "$E2E_WORK/work" -mindepth 2 -maxdepth 2 2>/dev/null || true)
  [ -z "$left" ] || fail "container images left in the work dir: $left"
  local n
  n=$(ls "$E2E_WORK/ctrd/state/io.containerd.runtime.v2.task/default" 2>/dev/null | wc -l)
  [ "$n" = 0 ] || fail "containerd still has $n task bundles"
  return 0
}

kill_rm() { # ID...: SIGKILL each, wait for STOPPED, delete task and container
  local id
  for id in "$@"; do
    ctr_ task kill -s SIGKILL "$id"
    timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep '^$id ' | grep -q STOPPED; do sleep 0.3; done"
    ctr_ task rm "$id" >/dev/null
    ctr_ containers rm "$id"
  done
}

# ctr run with the husk runtime: husk_run [ctr run flags...] IMAGE ID [CMD...]
husk_run() { ctr_ run --runtime "$RUNTIME" "$@"; }

# Pids of this run's virtiofsd processes (the one the shim started and its sandboxed server).
virtiofsds() {
  local p
  for p in $(e2e_pids); do
    [ "$(tr '\0' '\n' 2>/dev/null <"/proc/$p/cmdline" | head -1 | xargs -r basename)" = virtiofsd ] && echo "$p"
  done
  return 0
}
