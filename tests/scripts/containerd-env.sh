# Sourced by tests and the demo: a private containerd (own root, state, socket; no systemd).
#   . tests/scripts/containerd-env.sh; containerd_start DIR [PATH_PREFIX]; ctr_ ...; containerd_stop
# containerd_start exports CTR_ADDR; ctr_ runs ctr against it. containerd_stop kills containerd,
# every shim it started (they run in their own sessions) and unmounts what it left.
containerd_start() {
  local dir=$1 path_prefix=${2:-}
  CTRD_DIR=$dir
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  CTR_ADDR="$dir/containerd.sock"
  export CTR_ADDR
  PATH="${path_prefix:+$path_prefix:}$PATH" containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  CTRD_PID=$!
  local i
  for i in $(seq 1 200); do
    ctr -a "$CTR_ADDR" version >/dev/null 2>&1 && return 0
    kill -0 "$CTRD_PID" 2>/dev/null || { echo "containerd died:"; tail -20 "$dir/containerd.log"; return 1; }
    sleep 0.2
  done
  echo "containerd did not answer on $CTR_ADDR"; tail -20 "$dir/containerd.log"; return 1
}
ctr_() { ctr -a "$CTR_ADDR" "$@"; }
containerd_stop() {
  [ -n "${CTRD_PID:-}" ] || return 0
  # Safe under `set -e` (callers use it in EXIT traps): nothing here may fail the caller.
  kill "$CTRD_PID" 2>/dev/null || true
  wait "$CTRD_PID" 2>/dev/null || true
  pkill -KILL -f -- "-address $CTR_ADDR" 2>/dev/null || true
  local m
  for m in $(awk -v d="$CTRD_DIR" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  CTRD_PID=""
}
