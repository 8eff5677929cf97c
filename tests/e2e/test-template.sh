#!/usr/bin/env bash
# Template VMs ([vm] templates = true): the first container of a shape makes a template and
# every VM of that shape is restored from it, as a user of `ctr run` sees it:
#  1. c1 makes the template (its directory appears under [shim] template_dir) and runs
#     restored: its husk-vmm has --restore on its command line (from /proc); exec works; the
#     guest's wall clock is the host's (within a few seconds), not the template's.
#  2. c2 and c3 restore the same template: each guest draws its own random numbers (the
#     kernel's UUID and boot id differ between them: the agent reseeded each clone), each has
#     its own memory (a file written in one is not in the other), exit codes and output work.
#  3. A template whose memory file no longer fits is not restored: that container fails with
#     an error, the template is removed, and the next container makes it again and runs.
#  4. With templates = false a VM boots (no --restore) and works.
#  5. Nothing is left (leak_check: processes, mounts, state); the template stays.
# Needs hardware KVM (run inside tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
export HUSK_TEMPLATES=true
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
TPL=$E2E_WORK/templates
echo "template_dir = \"$TPL\"" >>"$E2E_WORK/husk.toml"
ex() { timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id "x$RANDOM" "$@"; }
start() { timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" "$1" sleep 100000 >/dev/null; }
# vmm_args ID: the command line of container ID's husk-vmm, from /proc.
vmm_args() {
  local p
  p=$(vmm_of "$1")
  [ -n "$p" ] || fail "no husk-vmm found for $1"
  tr '\0' ' ' <"/proc/$p/cmdline"
}

# 1. The first container makes the template and is restored from it.
start c1
n=$(find "$TPL" -name state.json 2>/dev/null | wc -l)
assert_eq 1 "$n" "templates under $TPL after the first container"
assert_contains "$(vmm_args c1)" "--restore" "c1's husk-vmm command line"
assert_eq c1-ok "$(ex c1 sh -c 'echo c1-ok')" "exec in c1"
skew=$(( $(ex c1 date +%s) - $(date +%s) ))
[ "${skew#-}" -le 5 ] || fail "the restored guest's clock is ${skew} s off the host's"
log "first container: template made, restored, clock within ${skew} s: ok"

# 2. Two more clones: own randomness, own memory.
start c2
start c3
assert_contains "$(vmm_args c2)" "--restore" "c2's husk-vmm command line"
u2=$(ex c2 cat /proc/sys/kernel/random/uuid) u3=$(ex c3 cat /proc/sys/kernel/random/uuid)
[ -n "$u2" ] && [ "$u2" != "$u3" ] || fail "two clones drew the same UUID ($u2): the RNG was not reseeded"
b2=$(ex c2 cat /proc/sys/kernel/random/boot_id) b3=$(ex c3 cat /proc/sys/kernel/random/boot_id)
[ "$b2" != "$b3" ] || fail "two clones have the same boot id $b2"
ex c2 sh -c 'echo only-in-c2 >/tmp/mark'
[ "$(ex c3 sh -c 'cat /tmp/mark 2>/dev/null || echo none')" = none ] || fail "c3 sees c2's file"
rc=0
ex c3 sh -c 'exit 7' || rc=$?
assert_eq 7 "$rc" "exit code of an exec in a clone"
log "clones: own UUIDs ($u2 / $u3), boot ids, memory; exit codes: ok"
kill_rm c1 c2 c3

# 3. A broken template: the container fails, the template goes, the next one remakes it.
dir=$(dirname "$(find "$TPL" -name state.json | head -1)")
truncate -s 4096 "$dir/memory"
if timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" "$IMAGE" c-bad sleep 100000 >"$E2E_WORK/bad.out" 2>&1; then
  fail "a container started from a template with a 4 KiB memory file"
fi
log "broken template refused: $(tail -c 300 "$E2E_WORK/bad.out" | tr '\n' ' ')"
ctr_ container rm c-bad >/dev/null 2>&1 || true
[ ! -e "$dir/state.json" ] || fail "the broken template is still there"
start c4
assert_contains "$(vmm_args c4)" "--restore" "c4 (after the template was remade)"
assert_eq c4-ok "$(ex c4 sh -c 'echo c4-ok')" "exec in c4"
kill_rm c4
log "a broken template is removed and remade: ok"

# 4. Templates off: the VM boots.
sed -i 's/^templates = .*/templates = false/' "$E2E_WORK/husk.toml"
start c5
case "$(vmm_args c5)" in *--restore*) fail "c5 was restored with templates = false" ;; esac
assert_eq c5-ok "$(ex c5 sh -c 'echo c5-ok')" "exec in a booted VM"
kill_rm c5
log "templates = false boots: ok"

leak_check
[ -n "$(find "$TPL" -name state.json)" ] || fail "the template is gone after the containers"
log "PASS"
