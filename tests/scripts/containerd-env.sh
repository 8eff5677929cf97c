# Sourced by tests and the demo: a private containerd (own root, state, socket; no systemd).
#   . tests/scripts/containerd-env.sh; containerd_start DIR [PATH_PREFIX]; ctr_ ...; containerd_stop
# containerd_start exports CTR_ADDR; ctr_ runs ctr against it. containerd_stop kills containerd,
# every shim it started (they run in their own sessions) and unmounts what it left.
#
# CRI variant (what kubelet talks to):
#   containerd_start_cri DIR SANDBOX_IMAGE HUSK_CONFIG [PATH_PREFIX]
# the CRI plugin with the runtime handlers `runc` (io.containerd.runc.v2) and `husk`
# (io.containerd.husk.v2, runtime options ConfigPath = HUSK_CONFIG), cgroupfs, SANDBOX_IMAGE as
# the pod sandbox image, CNI from /usr/lib/cni with a private bridge network (the node is its
# gateway; host-local IPAM; portmap for the pods' port mappings; containerd adds the loopback
# network itself). containerd runs under a restart loop, as under
# systemd's Restart=always: a test may kill it (pid in DIR/containerd.pid) and it comes back.
# Sets CTR_ADDR (also the CRI socket), CTRD_BRIDGE, CTRD_SUBNET; containerd_stop ends it all.

# The top of a config.toml: version, root, state (top-level keys in $2 come before the tables).
_ctrd_toml() { # DIR [TOP_LEVEL_LINES]
  cat <<TOML
version = 2
root = "$1/root"
state = "$1/state"
${2:-}
[grpc]
  address = "$1/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$1/opt"
TOML
}

# Waits until containerd answers on CTR_ADDR while process $2 lives.
_ctrd_wait() { # DIR PID
  local i
  for i in $(seq 1 200); do
    ctr -a "$CTR_ADDR" version >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "containerd died:"; tail -20 "$1/containerd.log"; return 1; }
    sleep 0.2
  done
  echo "containerd did not answer on $CTR_ADDR"; tail -20 "$1/containerd.log"; return 1
}

containerd_start() {
  local dir=$1 path_prefix=${2:-}
  CTRD_DIR=$dir
  mkdir -p "$dir"
  _ctrd_toml "$dir" 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' >"$dir/config.toml"
  CTR_ADDR="$dir/containerd.sock"
  export CTR_ADDR
  PATH="${path_prefix:+$path_prefix:}$PATH" containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  CTRD_PID=$!
  _ctrd_wait "$dir" "$CTRD_PID"
}

containerd_start_cri() {
  local dir=$1 sandbox_image=$2 husk_config=$3 path_prefix=${4:-}
  local cri='plugins."io.containerd.grpc.v1.cri"'
  CTRD_DIR=$dir
  mkdir -p "$dir/net.d"
  # A bridge and subnet of this run (names: 15 characters at most).
  CTRD_BRIDGE=hcri$(($$ % 100000))
  CTRD_SUBNET=10.$((200 + $$ % 50)).$((($$ / 50) % 256)).0/24
  cat >"$dir/net.d/10-husk-cri.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "husk-cri", "plugins": [
  {"type": "bridge", "bridge": "$CTRD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni-ipam", "ranges": [[{"subnet": "$CTRD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  {
    _ctrd_toml "$dir"
    cat <<TOML
[$cri]
  sandbox_image = "$sandbox_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # No lower OOM score than containerd's own (kubelet asks -998 for sandboxes): hosts that deny
  # lowering it (no CAP_SYS_RESOURCE) would fail every pod.
  restrict_oom_score_adj = true
  enable_selinux = false
[$cri.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[$cri.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[$cri.containerd.runtimes.runc.options]
  SystemdCgroup = false
[$cri.containerd.runtimes.husk]
  runtime_type = "io.containerd.husk.v2"
[$cri.containerd.runtimes.husk.options]
  ConfigPath = "$husk_config"
[$cri.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$dir/net.d"
  max_conf_num = 1
TOML
  } >"$dir/config.toml"
  CTR_ADDR="$dir/containerd.sock"
  export CTR_ADDR
  rm -f "$dir/stopping" "$dir/containerd.pid"
  # The restart loop; it gives up after 20 launches (a config containerd rejects).
  (
    n=0
    while [ ! -e "$dir/stopping" ] && [ "$n" -lt 20 ]; do
      n=$((n + 1))
      PATH="${path_prefix:+$path_prefix:}$PATH" containerd --config "$dir/config.toml" >>"$dir/containerd.log" 2>&1 &
      echo $! >"$dir/containerd.pid"
      wait $!
      [ -e "$dir/stopping" ] || { echo "containerd-env: containerd exited; restarting it" >>"$dir/containerd.log"; sleep 0.5; }
    done
  ) &
  CTRD_LOOP=$!
  _ctrd_wait "$dir" "$CTRD_LOOP"
}

ctr_() { ctr -a "$CTR_ADDR" "$@"; }
containerd_stop() {
  [ -n "${CTRD_PID:-}${CTRD_LOOP:-}" ] || return 0
  # Safe under `set -e` (callers use it in EXIT traps): nothing here may fail the caller.
  if [ -n "${CTRD_LOOP:-}" ]; then
    : >"$CTRD_DIR/stopping"
    local i
    for i in $(seq 1 100); do
      kill -0 "$CTRD_LOOP" 2>/dev/null || break
      kill "$(cat "$CTRD_DIR/containerd.pid" 2>/dev/null)" 2>/dev/null || true
      sleep 0.1
    done
    wait "$CTRD_LOOP" 2>/dev/null || true
    CTRD_LOOP=""
  else
    kill "$CTRD_PID" 2>/dev/null || true
    wait "$CTRD_PID" 2>/dev/null || true
  fi
  pkill -KILL -f -- "-address $CTR_ADDR" 2>/dev/null || true
  local m
  for m in $(awk -v d="$CTRD_DIR" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  if [ -n "${CTRD_BRIDGE:-}" ]; then ip link del "$CTRD_BRIDGE" 2>/dev/null || true; CTRD_BRIDGE=""; fi
  CTRD_PID=""
}
