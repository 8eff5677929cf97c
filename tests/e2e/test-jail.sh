#!/usr/bin/env bash
# husk-vmm runs jailed (issue 20, H4), seen from /proc and ps: a uid of the jail range (not
# 0, one per sandbox), its root is the sandbox's jail directory holding only its files, its
# own mount, PID and IPC namespaces, no capabilities, no new privileges, its limits, the pod's
# cgroup. Through the jail: the agent (vsock), the control API, a disk slot attach (a pod's
# second container) and a virtio-fs share work. After delete, and after the VMM is killed,
# nothing is left: processes, jail uids, mounts, files. Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
husk() { "$HUSK_BIN_DIR/husk" --config "$HUSK_CONFIG" "$@"; }
state() { echo "$E2E_WORK/run-husk/default/$1"; }
task_pid() { ctr_ task ls | awk -v id="$1" '$1 == id {print $2}'; }
field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
stop() { # ID: kill, wait for STOPPED, delete
  ctr_ task kill -s SIGKILL "$1" 2>/dev/null || true
  timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep '^$1 ' | grep -q STOPPED; do sleep 0.3; done"
  ctr_ task rm "$1" >/dev/null
  ctr_ containers rm "$1"
}

# 0. husk check builds a jail and runs husk-vmm in it.
out=$(husk check || true)
grep -q '^ok   jail .*ran as uid' <<<"$out" || fail "husk check: the jail item: $(grep jail <<<"$out")"
log "husk check: jail ok"

# 1. A pod's sandbox, and a container that is its own pod: each VMM has its own jail uid.
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=sandbox" --annotation "$SB=p1" "$IMAGE" p1 sleep 100000 >/dev/null
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" solo sleep 100000 >/dev/null
vmm=$(vmm_of p1)
solo_vmm=$(vmm_of solo)
[ -n "$vmm" ] && [ -n "$solo_vmm" ] || fail "husk-vmm processes not found (p1: [$vmm], solo: [$solo_vmm])"
uid=$(ps -o uid= -p "$vmm" | tr -d ' ')
solo_uid=$(ps -o uid= -p "$solo_vmm" | tr -d ' ')
log "husk-vmm of p1: pid $vmm uid $uid; of solo: pid $solo_vmm uid $solo_uid"
[ "$uid" != 0 ] || fail "husk-vmm runs as root"
[ "$uid" -ge "$JAIL_UID_FIRST" ] && [ "$uid" -lt $((JAIL_UID_FIRST + JAIL_UID_COUNT)) ] || fail "uid $uid outside the jail range"
[ "$uid" != "$solo_uid" ] || fail "two sandboxes share uid $uid"
assert_eq "$uid	$uid	$uid	$uid" "$(awk '/^Uid:/ {print $2"\t"$3"\t"$4"\t"$5}' "/proc/$vmm/status")" "real, effective, saved and fs uid"
assert_eq "$uid	$uid	$uid	$uid" "$(awk '/^Gid:/ {print $2"\t"$3"\t"$4"\t"$5}' "/proc/$vmm/status")" "gids: the uid's number"
assert_eq "" "$(field "$vmm" Groups)" "supplementary groups"
assert_eq "0000000000000000" "$(field "$vmm" CapEff)" "effective capabilities"
assert_eq 1 "$(field "$vmm" NoNewPrivs)" "no_new_privs"

# Its root is the jail: the same directory (the path itself reads "/", as the host's tree is
# detached from its mount namespace), holding only the VMM's files.
jail=$(state p1)/jail
assert_eq "$(stat -c %d:%i "$jail")" "$(stat -L -c %d:%i "/proc/$vmm/root/")" "/proc/$vmm/root is the jail"
entries=$(ls -A "/proc/$vmm/root/" | tr '\n' ' ')
log "the VMM's / holds: $entries"
for e in husk-vmm boot dev run vm.toml; do [[ " $entries" == *" $e "* ]] || fail "$e missing from the jail: $entries"; done
for e in etc proc sys home root tmp var; do [[ " $entries" != *" $e "* ]] || fail "host directory $e visible in the jail: $entries"; done
assert_eq "kvm" "$(ls -A "/proc/$vmm/root/dev" | tr '\n' ' ' | sed 's/ $//')" "the jail's /dev"
[ ! -e "$jail/dev/kvm" ] || fail "the kvm node is on the host, not in the VMM's own tmpfs"
assert_eq "$uid" "$(stat -c %u "$jail/run")" "the run directory is the VMM's"
assert_eq "$uid" "$(stat -c %u "$jail/run/console.log")" "the console log is the VMM's"
# The root disk came as a descriptor the shim opened: the image is not in the jail, yet the
# VMM holds it open.
[ ! -e "/proc/$vmm/root/disks" ] || fail "disk images bound into the jail: $(ls -A "/proc/$vmm/root/disks")"
image=$(grep -o '"image": *"[^"]*"' "$(state p1)/state.json" | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
[ -n "$image" ] || fail "no image in $(state p1)/state.json"
held=$(for f in /proc/"$vmm"/fd/*; do readlink "$f"; done | grep -cxF -- "$image" || true)
[ "$held" -ge 1 ] || fail "husk-vmm does not hold its root disk $image open"

# Its own mount, PID (it is PID 1 there) and IPC namespaces.
for ns in mnt pid ipc; do
  [ "$(readlink "/proc/$vmm/ns/$ns")" != "$(readlink /proc/self/ns/$ns)" ] || fail "$ns namespace shared with the host"
done
assert_eq 1 "$(awk '/^NSpid:/ {print $NF}' "/proc/$vmm/status")" "pid in its own PID namespace"
# Its limits: open files from the config, threads for 1 vCPU + 1 disk + 8 slots + 8.
assert_eq "4096 4096" "$(awk '/^Max open files/ {print $4, $5}' "/proc/$vmm/limits")" "RLIMIT_NOFILE"
assert_eq "18 18" "$(awk '/^Max processes/ {print $3, $4}' "/proc/$vmm/limits")" "RLIMIT_NPROC"
assert_eq "0 0" "$(awk '/^Max core file size/ {print $5, $6}' "/proc/$vmm/limits")" "RLIMIT_CORE"
# The pod's cgroup (the sandbox spec's cgroupsPath) holds the VMM.
cg=$(grep -o '"cgroupsPath": *"[^"]*"' "$E2E_WORK/ctrd/state/io.containerd.runtime.v2.task/default/p1/config.json" | sed 's/.*"\([^"]*\)"$/\1/' || true)
if [ -n "$cg" ]; then grep -q -- "$cg" "/proc/$vmm/cgroup" || fail "husk-vmm is not in the pod's cgroup $cg: $(cat "/proc/$vmm/cgroup")"; fi
log "uid, root, namespaces, capabilities, limits, cgroup: ok"

# 2. Through the jail: the agent (exec over vsock) and the control API in the jail's run dir.
assert_eq "hello" "$(ctr_ task exec --exec-id e1 p1 echo hello)" "exec in the sandbox"
desc=$(curl -sf --unix-socket "$jail/run/api.sock" http://localhost/vm)
assert_contains "$desc" '"kernel":"/boot/kernel"' "the VMM sees the kernel at its jail path"
assert_contains "$desc" '"api_sock":"/run/api.sock"' "the API socket at its jail path"

# 3. A second container joins: its root disk is attached to a slot as a passed descriptor.
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=p1" \
  --with-ns "network:/proc/$(task_pid p1)/ns/net" "$IMAGE" app sleep 100001 >/dev/null
assert_eq "from-app" "$(ctr_ task exec --exec-id a1 app echo from-app)" "exec in the joined container"
disks=$(curl -sf --unix-socket "$jail/run/api.sock" http://localhost/vm/disks)
slot=$(grep -o '{[^}]*}' <<<"$disks" | grep '"kind":"slot"' | grep '"attached":true' || true)
# A VM restored from a template has the sandbox's root disk in a slot too (slot0).
want=1
tr '\0' ' ' <"/proc/$vmm/cmdline" | grep -q -- '--restore' && want=2
[ "$(grep -c . <<<"$slot")" = "$want" ] || fail "$want slot(s) attached: $disks"
slot=$(tail -1 <<<"$slot")
assert_contains "$slot" '"path":"/' "the attached image is named by its host path"
log "disk slot through a descriptor: ok ($slot)"

# 4. A host directory reaches a container over virtio-fs (the VMM got virtiofsd's connection).
mkdir -p "$E2E_WORK/vol"
echo from-host >"$E2E_WORK/vol/in.txt"
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=p1" \
  --with-ns "network:/proc/$(task_pid p1)/ns/net" --mount "type=bind,src=$E2E_WORK/vol,dst=/data,options=rbind:rw" \
  "$IMAGE" files sleep 100002 >/dev/null
assert_eq "from-host" "$(ctr_ task exec --exec-id f1 files cat /data/in.txt)" "host file read over virtio-fs"
ctr_ task exec --exec-id f2 files sh -c 'echo from-guest >/data/out.txt'
assert_eq "from-guest" "$(cat "$E2E_WORK/vol/out.txt")" "guest write seen on the host"
log "virtio-fs share: ok"

# 5. Delete: the VMM, its uid and everything of the jail go.
for id in files app p1; do stop "$id"; done
[ ! -d "/proc/$vmm" ] || grep -q ') Z ' "/proc/$vmm/stat" || fail "husk-vmm $vmm still runs"
[ -z "$(jail_uid_processes | grep ":$uid\$" || true)" ] || fail "uid $uid still in use"
[ ! -e "$(state p1)" ] || fail "the jail of p1 is left: $(find "$(state p1)" | head)"

# 6. A VMM killed from outside (a crash) leaves nothing either once its task is deleted.
kill -KILL "$solo_vmm"
timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep '^solo ' | grep -q STOPPED; do sleep 0.3; done"
stop solo
[ -z "$(jail_uid_processes)" ] || fail "jail uids in use after delete: $(jail_uid_processes)"
leak_check
log "test-jail: all passed"
