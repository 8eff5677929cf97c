#!/usr/bin/env bash
# Volumes when things go wrong, through ctr (husk). Needs hardware KVM (tests/testbed/run).
#  1. Bind mount sources husk cannot share: one that does not exist, a unix socket, a
#     character device, a FIFO; and a destination over /proc. A `ctr run` container (its own
#     sandbox) and a container joining a pod are each refused at create with an error naming
#     the source (or the destination) and the cause; nothing is left after each (processes,
#     mounts, husk state, counted from /proc and /proc/self/mounts), and the pod keeps running.
#  2. The pod's virtiofsd dies (SIGKILL) under a running pod: the container gets I/O errors
#     on its volume, the tasks keep their state (RUNNING; exec works, in the container and in
#     the sandbox), and deleting them still cleans everything up: no virtiofsd, no bind mount,
#     no shared directory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
task_pid() { ctr_ task ls | awk -v id="$1" '$1 == id {print $2}'; }
task_status() { ctr_ task ls | awk -v id="$1" '$1 == id {print $3}'; }
# Mounts below this run's directory (the pod's shared directory and its volumes among them).
mounts_below() { awk -v d="$1" 'index($2, d) == 1 {print $2}' /proc/self/mounts; }

# 1. Bad sources.
python3 -c "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$E2E_WORK/app.sock"
mkfifo "$E2E_WORK/fifo"
mkdir -p "$E2E_WORK/dir"
BAD=("$E2E_WORK/nope|/mnt/vol|$E2E_WORK/nope|does not exist"
  "$E2E_WORK/app.sock|/mnt/vol|$E2E_WORK/app.sock|unix socket"
  "/dev/null|/mnt/vol|/dev/null|character device"
  "$E2E_WORK/fifo|/mnt/vol|$E2E_WORK/fifo|FIFO"
  "$E2E_WORK/dir|/proc/sys|/proc/sys|may not shadow")
refused() { # ID SRC DST NAMED CAUSE [ctr run flags...]: the container is refused naming NAMED and CAUSE
  local id=$1 src=$2 dst=$3 named=$4 cause=$5 rc=0 out
  shift 5
  out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$@" \
    --mount "type=bind,src=$src,dst=$dst,options=rbind:rw" "$IMAGE" "$id" true 2>&1) || rc=$?
  [ "$rc" != 0 ] || fail "a container with a bind mount of $src on $dst ran"
  assert_contains "$out" "$named" "the refusal of $src on $dst"
  assert_contains "$out" "$cause" "the refusal of $src on $dst"
  ctr_ containers rm "$id" >/dev/null 2>&1 || true
}
i=0
for b in "${BAD[@]}"; do
  IFS='|' read -r src dst named cause <<<"$b"
  refused "bad$i" "$src" "$dst" "$named" "$cause"
  leak_check
  i=$((i + 1))
done
log "bad sources refused for a ctr run container, nothing left: ok"

timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=sandbox" --annotation "$SB=p1" "$IMAGE" p1 sleep 100000 >/dev/null
shared=$E2E_WORK/run-husk/default/p1/shared
before_mounts=$(mounts_below "$E2E_WORK/" | sort)
before_procs=$(e2e_pids | sort)
i=0
for b in "${BAD[@]}"; do
  IFS='|' read -r src dst named cause <<<"$b"
  refused "member$i" "$src" "$dst" "$named" "$cause" --annotation "$CT=container" --annotation "$SB=p1" \
    --with-ns "network:/proc/$(task_pid p1)/ns/net"
  assert_eq "$before_mounts" "$(mounts_below "$E2E_WORK/" | sort)" "mounts after a refused member ($src on $dst)"
  assert_eq "$before_procs" "$(e2e_pids | sort)" "processes after a refused member ($src on $dst)"
  left=$(ls -A "$E2E_WORK/run-husk/default/p1/containers" 2>/dev/null || true)
  [ -z "$left" ] || fail "container state left in the pod after a refused member: $left"
  i=$((i + 1))
done
assert_eq RUNNING "$(task_status p1)" "the pod after the refused members"
log "bad sources refused for a pod member, the pod untouched: ok"

# 2. virtiofsd dies under the running pod.
mkdir -p "$E2E_WORK/vol"
echo seen-before >"$E2E_WORK/vol/before.txt"
echo never-read >"$E2E_WORK/vol/unread.txt"
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --annotation "$CT=container" --annotation "$SB=p1" \
  --with-ns "network:/proc/$(task_pid p1)/ns/net" --mount "type=bind,src=$E2E_WORK/vol,dst=/data,options=rbind:rw" \
  "$IMAGE" files sleep 100001 >/dev/null
assert_eq seen-before "$(ctr_ task exec --exec-id r1 files cat /data/before.txt)" "the volume before virtiofsd dies"
[ -n "$(mounts_below "$shared/")" ] || fail "no share below $shared while the container runs"
vfs=$(virtiofsds)
[ -n "$vfs" ] || fail "no virtiofsd for the pod in /proc"
# shellcheck disable=SC2086 # pids are words
kill -KILL $vfs
for _ in $(seq 100); do [ -z "$(virtiofsds)" ] && break; sleep 0.1; done
[ -z "$(virtiofsds)" ] || fail "virtiofsd still running after SIGKILL: $(virtiofsds)"
log "killed virtiofsd ($(echo $vfs))"
for probe in "cat /data/unread.txt" "ls /data" "echo x >/data/after.txt"; do
  rc=0; out=$(ctr_ task exec --exec-id "k$RANDOM" files sh -c "$probe" 2>&1) || rc=$?
  [ "$rc" != 0 ] || fail "\`$probe\` on the volume succeeded after virtiofsd died: [$out]"
  [[ "$out" == *"I/O error"* || "$out" == *"Input/output error"* || "$out" == *"Transport endpoint is not connected"* ]] \
    || fail "\`$probe\` after virtiofsd died: exit $rc, [$out], want an I/O error"
done
[ ! -e "$E2E_WORK/vol/after.txt" ] || fail "a write after virtiofsd died reached the host"
log "the container gets I/O errors on its volume: ok"
assert_eq RUNNING "$(task_status files)" "the container's state after virtiofsd died"
assert_eq RUNNING "$(task_status p1)" "the sandbox's state after virtiofsd died"
assert_eq alive "$(ctr_ task exec --exec-id a1 files echo alive)" "exec in the container after virtiofsd died"
assert_eq alive "$(ctr_ task exec --exec-id a2 p1 echo alive)" "exec in the sandbox after virtiofsd died"
assert_eq 1 "$(ctr_ task exec --exec-id a3 files cat /proc/1/cmdline | tr '\0' ' ' | grep -c 'sleep 100001')" "the container's init after virtiofsd died"
log "the tasks keep their state, exec works: ok"
kill_rm files
left=$(mounts_below "$shared/")
[ -z "$left" ] || fail "the container's share is still mounted after its delete: $left"
kill_rm p1
[ ! -e "$shared" ] || fail "the shared directory $shared is left"
leak_check
log "delete after virtiofsd died: no virtiofsd, no mount, no shared directory: ok"
log "test-volumes: all passed"
