#!/usr/bin/env bash
# The control API on a real guest: describe, pause (the guest's clock-driven output stops),
# resume, counters, and graceful shutdown (Ctrl-Alt-Del through the i8042 reaches the guest
# kernel's keyboard driver, which restarts the machine since busybox /init did not take
# Ctrl-Alt-Del over -> exit 1).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

mkinit ticker 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'
sock=$work/api.sock
"$VMM" --kernel "$KDIR/vmlinux" --initrd "$work/ticker.cpio.gz" --memory 128M --cmdline "$CMDLINE" \
  --console "file:$work/console.log" --api-sock "$sock" 2>"$work/err" &
pid=$!
# Every request here must succeed: -f turns an HTTP error into a failed call.
req() { curl -f -s -S --max-time 20 --unix-socket "$sock" -X "$1" "http://localhost$2"; }
for _ in $(seq 600); do grep -q 'tick 3' "$work/console.log" 2>/dev/null && break; sleep 0.2; done
if grep -q 'tick 3' "$work/console.log"; then ok "guest is ticking"; else bad "guest never ticked"; fi

body=$(req GET /vm)
if grep -q '"state":"running"' <<<"$body" && grep -q 'virtio_mmio\|console=ttyS0' <<<"$body"; then ok "GET /vm describes the VM"; else bad "GET /vm: $body"; fi
body=$(req PUT /vm/pause)
[ "$body" = '{"state":"paused"}' ] && ok "paused" || bad "pause: $body"
a=$(grep -c tick "$work/console.log"); sleep 3; b=$(grep -c tick "$work/console.log")
[ "$a" = "$b" ] && ok "no ticks while paused ($a)" || bad "ticks went on while paused: $a -> $b"
body=$(req PUT /vm/resume)
[ "$body" = '{"state":"running"}' ] && ok "resumed" || bad "resume: $body"
for _ in $(seq 100); do c=$(grep -c tick "$work/console.log"); [ "$c" -gt "$b" ] && break; sleep 0.2; done
[ "$c" -gt "$b" ] && ok "ticks again after resume ($b -> $c)" || bad "no ticks after resume"
req GET /vm/counters >/dev/null && ok "counters answer" || bad "counters"
body=$(req PUT /vm/shutdown)
grep -q 'ctrl-alt-del' <<<"$body" && ok "shutdown requested" || bad "shutdown: $body"
rc=0
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$pid" 2>/dev/null; then bad "VM still running after shutdown"; kill -9 "$pid"; fi
wait "$pid" || rc=$?
[ "$rc" = 1 ] && grep -q 'guest rebooted' "$work/err" && ok "guest restarted on Ctrl-Alt-Del -> exit 1" || bad "after shutdown: exit $rc, $(cat "$work/err")"
[ -e "$sock" ] && bad "API socket left behind" || ok "API socket removed"
finish
