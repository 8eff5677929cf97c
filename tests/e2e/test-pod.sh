#!/usr/bin/env bash
# Pods through ctr, the way containerd's CRI plugin lays them out: a sandbox container with
# CRI's annotations boots one VM; containers naming it (io.kubernetes.cri.sandbox-id) join that
# VM through disk slots and share its network, while each keeps its own PID namespace. Host
# directories and files reach containers as bind mounts (virtio-fs). Deletes free the slots;
# deleting the sandbox ends the VM; nothing is left. Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
vmms() { # husk-vmm processes of this run, from /proc
  local n=0 p
  for p in $(e2e_pids); do tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q -- '--config' && n=$((n + 1)); done
  echo "$n"
}
task_pid() { ctr_ task ls | awk -v id="$1" '$1 == id {print $2}'; }
join() { # ID [ctr run flags...] -- CMD...: a container of pod p1 sharing its network
  local id=$1; shift
  timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=p1" \
    --with-ns "network:/proc/$(task_pid p1)/ns/net" "$@"
}

# 1. The sandbox boots the VM.
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=sandbox" --annotation "$SB=p1" "$IMAGE" p1 sleep 100000 >/dev/null
assert_eq 1 "$(vmms)" "VMs after the sandbox"

# 2. Two containers join it: one VM still; they share the pod's network (a server in one is
#    reached from the other on localhost); each is PID 1 of its own PID namespace.
join web "$IMAGE" web sh -c 'echo pid=$$ >/tmp/me; while true; do echo hello-from-web | nc -l -p 8080; done' >/dev/null
join cli "$IMAGE" cli sleep 100001 >/dev/null
assert_eq 1 "$(vmms)" "VMs after two containers joined"
out=""
for _ in $(seq 60); do
  out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id x1 cli sh -c 'nc -w 3 127.0.0.1 8080 </dev/null' 2>/dev/null || true)
  [ -n "$out" ] && break
  sleep 1
done
assert_eq "hello-from-web" "$out" "web reached from cli on localhost"
assert_eq "pid=1" "$(ctr_ task exec --exec-id x2 web cat /tmp/me)" "web is PID 1 of its own namespace"
procs=$(ctr_ task exec --exec-id x3 cli ps -o pid,args)
assert_contains "$procs" "1 sleep 100001" "cli's PID 1 is its own init"
[[ "$procs" != *"sleep 100000"* ]] || fail "cli sees the sandbox's processes: $procs"
[[ "$procs" != *"nc -l"* ]] || fail "cli sees web's processes: not its own PID namespace: $procs"
# Each container has its own root: web's /tmp/me is not in cli.
rc=0; ctr_ task exec --exec-id x4 cli test -e /tmp/me || rc=$?
assert_eq 1 "$rc" "separate root filesystems"
log "one VM, shared network, own PID namespaces and roots: ok"

# 3. Host files: a directory read-write, a single file read-only; writes reach the host.
mkdir -p "$E2E_WORK/vol"
echo from-host >"$E2E_WORK/vol/in.txt"
echo "host-file-content" >"$E2E_WORK/single.conf"
join files --mount "type=bind,src=$E2E_WORK/vol,dst=/data,options=rbind:rw" \
  --mount "type=bind,src=$E2E_WORK/single.conf,dst=/etc/single.conf,options=rbind:ro" \
  "$IMAGE" files sleep 100000 >/dev/null
assert_eq "from-host" "$(ctr_ task exec --exec-id f1 files cat /data/in.txt)" "host file read"
ctr_ task exec --exec-id f2 files sh -c 'echo from-guest >/data/out.txt'
assert_eq "from-guest" "$(cat "$E2E_WORK/vol/out.txt")" "guest write seen on the host"
assert_eq "host-file-content" "$(ctr_ task exec --exec-id f3 files cat /etc/single.conf)" "single file bind"
rc=0; ctr_ task exec --exec-id f4 files sh -c 'echo x >/etc/single.conf' 2>/dev/null || rc=$?
[ "$rc" != 0 ] || fail "a read-only bind was writable"
echo changed-on-host >"$E2E_WORK/vol/in.txt"
seen=""
for _ in $(seq 30); do
  seen=$(ctr_ task exec --exec-id "f5-$RANDOM" files cat /data/in.txt)
  [ "$seen" = changed-on-host ] && break
  sleep 1
done
assert_eq "changed-on-host" "$seen" "host-side change seen in the container"
# The agent sets the shared virtio-fs mount's read-ahead to virtiofsd's largest request
# (1 MiB) rather than the kernel's 128 KiB. /data is a submount of it (virtiofsd announces
# the host's bind mount), stacked in mountinfo over the bind of the pod's share; the
# submount has its own device but no bdi of its own (it uses the share's), so the device
# that has a bdi is the share's.
ra=$(ctr_ task exec --exec-id f6 files sh -c 'for d in $(awk "\$5 == \"/data\" {print \$3}" /proc/self/mountinfo); do [ -e /sys/class/bdi/$d ] && cat /sys/class/bdi/$d/read_ahead_kb; done; true')
assert_eq 1024 "$ra" "read-ahead of the virtio-fs volume's bdi (KiB)"
log "bind mounts over virtio-fs: ok"

# 4. A container whose sandbox-id names no running sandbox is refused, naming it.
rc=0; out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=nopod" "$IMAGE" orphan true 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "a container of an unknown pod ran"
assert_contains "$out" "nopod" "unknown pod error"
ctr_ containers rm orphan >/dev/null 2>&1 || true

# 5. Deleting members frees their slots; deleting the sandbox ends the VM.
kill_rm web cli files
assert_eq 1 "$(vmms)" "the VM stays while the sandbox runs"
# The pod's shared directory stays with the sandbox; the containers' shares in it are gone.
left=$(awk -v d="$E2E_WORK/run-husk/default/p1/shared/" 'index($2, d) == 1 {print $2}' /proc/self/mounts)
[ -z "$left" ] || fail "shares left after the containers went: $left"
kill_rm p1
leak_check
log "test-pod: all passed"
