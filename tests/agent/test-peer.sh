#!/usr/bin/env bash
# The agent answers only the host's vsock CID: husk-agent listens on vsock in the testbed's
# outer VM (not as PID 1), the vsock loopback transport is loaded there, and a ttrpc client
# (guest-agent/tests/peer.rs) connecting from CID 1 must get no answer, while the agent logs
# the refusal naming the peer. (Inside a guest there is no loopback, so no guest process can
# make this connection; tests/agent/test-guest.sh shows the host's connections still work.)
# Needs tests/agent/build.sh first (outside the testbed).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=${CARGO_TARGET_DIR:-$repo/target}
agent=$t/x86_64-unknown-linux-musl/agent/husk-agent
client=$(cat "$t/agent-test/peer-test.path" 2>/dev/null)
[ -x "$agent" ] && [ -x "$client" ] || { echo "run tests/agent/build.sh first"; exit 1; }
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
work=$(mktemp -d)
cg=/sys/fs/cgroup/husk-peer-test-$$
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -KILL "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  rmdir "$cg" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if ! grep -q vsock_loopback /proc/modules 2>/dev/null; then
  ko=$(ls "$t"/agent-test/vsock_loopback.ko 2>/dev/null)
  modprobe vsock_loopback 2>/dev/null || { [ -n "$ko" ] && insmod "$ko"; } \
    || { bad "cannot load vsock_loopback (modprobe, or $t/agent-test/vsock_loopback.ko from build.sh)"; exit 1; }
fi
port=$((20000 + $$ % 10000))
"$agent" --listen "vsock://-1:$port" --run-dir "$work/run" --cgroup-root "$cg" --log-level debug \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do grep -q "ready on vsock" "$work/agent.log" && break; sleep 0.1; done
grep -q "ready on vsock://-1:$port" "$work/agent.log" || { bad "agent did not start: $(tail -5 "$work/agent.log")"; exit 1; }

if HUSK_AGENT_VSOCK="vsock://1:$port" timeout 120 "$client" --ignored --nocapture; then
  ok "a vsock peer with CID 1 gets no answer from the agent"
else
  bad "the CID 1 client got an answer (or failed otherwise)"
fi
if grep -q "refused a connection: vsock peer CID 1 (port [0-9]*) is not the host (CID 2)" "$work/agent.log"; then
  ok "the agent logged the refusal, naming the peer"
else
  bad "no refusal in the agent's log:"; tail -20 "$work/agent.log"
fi
kill -0 "$agent_pid" 2>/dev/null && ok "the agent still runs after refusing" || bad "the agent died"
echo "agent peer tests: $pass passed, $fail failed"
((fail == 0))
