# shellcheck shell=bash
# Sourced by tests/vmm/test-snapshot*.sh after lib.sh: VMs in the background
# and their control API. The caller has `pids=()` (every pid started, for its cleanup).
# vm NAME ARGS...: husk-vmm in the background, console in NAME.log, API on NAME.sock, stderr
# in NAME.err; its pid in $pid_NAME.
vm() {
  local n=$1
  shift
  "$VMM" --console "file:$work/$n.log" --api-sock "$work/$n.sock" "$@" 2>"$work/$n.err" &
  pids+=("$!")
  eval "pid_$n=$!"
}
# call NAME METHOD PATH [JSON]: a request to NAME's API; sets $code and $body.
call() {
  local out
  out=$(curl -sS --max-time 300 --unix-socket "$work/$1.sock" -w '\n%{http_code}' -X "$2" \
    ${4:+-H 'Content-Type: application/json' --data "$4"} "http://localhost$3" 2>&1)
  code=${out##*$'\n'} body=${out%$'\n'*}
}
# kill_vm NAME: PUT /vm/kill, then waits for the process.
kill_vm() {
  local p
  p=$(eval echo "\$pid_$1")
  call "$1" PUT /vm/kill
  wait "$p" 2>/dev/null
}
