#!/usr/bin/env bash
# nerdctl's way: the container's network is set up by an OCI createRuntime hook that runs CNI
# ADD in the network namespace of the pid in the state it gets on stdin, and torn down by a
# poststop hook (CNI DEL). The shim runs them on the host: the container gets the address the
# hook's CNI call assigned, from its boot, and answers on it. A failing hook fails Create with
# its stderr. Nothing is left after either. Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
net_setup
T=${HUSK_E2E_TIMEOUT:-600}

# A root filesystem directory for `ctr run --config` (a spec, no image).
root=$E2E_WORK/hookroot
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in $(busybox --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done

printf '%s\n' "{\"cniVersion\": \"1.0.0\", \"name\": \"husk-hook\", \"type\": \"bridge\", \"bridge\": \"$NET_BRIDGE\", \"isGateway\": true,
 \"ipam\": {\"type\": \"host-local\", \"dataDir\": \"$NET_IPAM\", \"ranges\": [[{\"subnet\": \"$NET_PREFIX.0/24\"}]], \"routes\": [{\"dst\": \"0.0.0.0/0\"}]}}" \
  >"$E2E_WORK/hook-net.json"
# The hook: what nerdctl's createRuntime (ADD) and postStop (DEL) hooks do, with the bridge
# plugin called directly. Its first argument is the CNI command.
{
  echo '#!/bin/bash'
  echo 'set -euo pipefail'
  echo 'state=$(cat)'
  echo 'field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$state" "$1"; }'
  echo 'pid=$(field pid) id=$(field id) status=$(field status)'
  echo "echo \"\$status \$pid\" >>$E2E_WORK/hook.log"
  echo 'export CNI_COMMAND=$1 CNI_CONTAINERID=$id CNI_NETNS=/proc/$pid/ns/net CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni'
  echo "/usr/lib/cni/bridge <$E2E_WORK/hook-net.json >$E2E_WORK/hook-\$1.json"
} >"$E2E_WORK/cni-hook"
printf '#!/bin/sh\necho "cni: no free address in the pool" >&2\nexit 5\n' >"$E2E_WORK/bad-hook"
chmod +x "$E2E_WORK/cni-hook" "$E2E_WORK/bad-hook"

spec() { # OUT CREATE_RUNTIME_HOOK
  ctr_ oci spec | python3 -c '
import json, sys
s = json.load(sys.stdin)
out, create, stop, root = sys.argv[1:5]
env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
s["root"] = {"path": root}
# Its own cgroup, as `ctr run` gives a container (`ctr oci spec` says /default, which is the
# parent of every other container of the namespace once one has run: no process may join it).
s["linux"]["cgroupsPath"] = "/default/" + out.rsplit("/", 1)[-1].removesuffix(".json")
s["process"]["args"] = ["sh", "-c", "while true; do echo hello-from-hooked | nc -l -p 8080; done"]
s["hooks"] = {"createRuntime": [{"path": create, "args": ["hook", "ADD"], "env": env, "timeout": 120}],
              "poststop": [{"path": stop, "args": ["hook", "DEL"], "env": env, "timeout": 120}]}
json.dump(s, open(out, "w"))
' "$1" "$2" "$E2E_WORK/cni-hook" "$root"
}

# 1. The hook configures the namespace during Create; the VM boots with that interface.
spec "$E2E_WORK/hooked.json" "$E2E_WORK/cni-hook"
timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" --config "$E2E_WORK/hooked.json" hooked >"$E2E_WORK/hooked.out" 2>&1 &
ctr_pid=$!
net_wait_running hooked 600 "$ctr_pid"
read -r status hook_pid <"$E2E_WORK/hook.log"
assert_eq "creating" "$status" "the hook's state"
assert_eq "husk-netns" "$(cat "/proc/$hook_pid/comm")" "the state's pid: the host process in the container's network namespace"
ip=$(net_ip hooked)
want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$E2E_WORK/hook-ADD.json")
assert_eq "$want" "$ip" "the container's address is the one the hook's CNI ADD assigned"
out=$(timeout 60 bash -c "exec 3<>/dev/tcp/$ip/8080; cat <&3")
assert_eq "hello-from-hooked" "$out" "TCP from the host to $ip:8080"
log "the hook's network reaches the VM: ok"

# 2. Delete runs the poststop hook (CNI DEL); nothing is left.
ctr_ task kill -s KILL hooked
wait "$ctr_pid" || true
sleep 1
assert_contains "$(cat "$E2E_WORK/hook.log")" "stopped $hook_pid" "poststop ran with the state"
[ -f "$E2E_WORK/hook-DEL.json" ] || fail "the poststop hook did not run CNI DEL"
net_leak_check

# 3. A failing createRuntime hook fails Create with its stderr; nothing is left.
spec "$E2E_WORK/bad.json" "$E2E_WORK/bad-hook"
rc=0
out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" --config "$E2E_WORK/bad.json" bad 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "a failing createRuntime hook did not fail ctr run"
assert_contains "$out" "cni: no free address in the pool" "ctr run's error"
assert_contains "$out" "createRuntime hook" "ctr run's error"
ctr_ containers rm bad 2>/dev/null || true
net_leak_check
log "PASS"
