#!/usr/bin/env bash
# Free page reporting end to end: a guest fills a tmpfs file of FILL_MB (64) MiB and removes
# it again; the host reads how much of guest RAM husk-vmm holds resident (Rss of its
# /memfd:husk-guest-ram mappings in /proc/PID/smaps, nothing from husk-vmm itself) before the
# fill, after it and after the removal. With --free-page-reporting the guest kernel reports
# the freed blocks (2 s after they were freed, then in batches) and husk-vmm punches them out
# of the memfd: resident guest RAM must fall back by at least 3/4 of what the fill added,
# within 90 s, and the API's balloon counters must show as many bytes reported and nothing
# refused. The same guest without the flag must keep at least 3/4 of it resident for as long
# as the first run needed and at least 20 s (so the measurement can fail), and has no
# balloon counters. Guest and host take turns: the guest prints HUSK-AT-<n> and waits on
# vsock port 500<n>; the host measures, then connects to that port.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
[ -x "$VSOCK_TOOL" ] || { echo "FAIL: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
FILL_MB=${HUSK_BALLOON_FILL_MB:-64}
mkinit_x balloon "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=$((FILL_MB + 16))m tmpfs /mnt
echo \"HUSK-AT-1 balloon-drivers=\$(ls /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | grep -c '^virtio')\"
vsock-tool wait 5001
dd if=/dev/zero of=/mnt/fill bs=1M count=$FILL_MB 2>/dev/null && echo \"HUSK-AT-2 \$(grep MemFree /proc/meminfo)\"
vsock-tool wait 5002
rm /mnt/fill && echo \"HUSK-AT-3 \$(grep MemFree /proc/meminfo)\"
vsock-tool wait 5099
poweroff -f" "$VSOCK_TOOL:/bin/vsock-tool"

# guest_rss_mib: resident guest RAM of husk-vmm ($vmm_pid), in MiB (rounded down).
guest_rss_mib() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { m = ($0 ~ /\/memfd:husk-guest-ram/) ; next } m && /^Rss:/ { kb += $2 } END { print int(kb / 1024) }' \
    "/proc/$vmm_pid/smaps" 2>/dev/null
}
# settled_mib: guest_rss_mib once two readings 1 s apart differ by at most 1 MiB (at most 30 s).
settled_mib() {
  local a b i
  a=$(guest_rss_mib)
  for ((i = 0; i < 30; i++)); do
    sleep 1
    b=$(guest_rss_mib)
    ((b - a <= 1 && a - b <= 1)) && break
    a=$b
  done
  echo "$b"
}
# wait_line NAME PATTERN SECS: waits for a console line starting with PATTERN; false on timeout
# or if the VMM is gone.
wait_line() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -aq "^$2" "$work/$1.out" 2>/dev/null && return 0
    kill -0 "$vmm_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
poke() { timeout -k 5 90 python3 "$vdir/vsock_host.py" poke "$work/$1.sock" "$2" >/dev/null 2>&1; }

# run_guest NAME HOLD_SECS [husk-vmm flags]: one VM through fill and removal. After the
# removal it polls resident guest RAM each second for HOLD_SECS, stopping early (reporting
# runs) once it fell back by 3/4 of the fill's growth. Sets base, filled, freed (MiB),
# took (s), drivers (bound balloon drivers in the guest), rc; counters in $work/NAME.json.
run_guest() {
  local name=$1 hold=$2 t0 i
  shift 2
  base=0 filled=0 freed=0 took=0 drivers=""
  start_vm "$name" "$work/balloon.cpio.gz" --vsock "cid=3,uds=$work/$name.sock" --api-sock "$work/$name.api" "$@"
  if wait_line "$name" HUSK-AT-1 180; then
    drivers=$(tr -d '\r' <"$work/$name.out" | sed -n 's/^HUSK-AT-1 balloon-drivers=//p' | head -1)
    base=$(settled_mib)
    poke "$name" 5001
  fi
  if wait_line "$name" HUSK-AT-2 180; then
    filled=$(settled_mib)
    poke "$name" 5002
  fi
  if wait_line "$name" HUSK-AT-3 120; then
    t0=$SECONDS
    for ((i = 0; i < hold; i++)); do
      sleep 1
      freed=$(guest_rss_mib)
      ((4 * (filled - freed) >= 3 * (filled - base))) && break
    done
    took=$((SECONDS - t0))
  fi
  curl -s --max-time 20 --unix-socket "$work/$name.api" http://localhost/vm/counters >"$work/$name.json"
  poke "$name" 5099
  wait_vm 120
  echo "  $name: guest RAM resident before the fill $base MiB, after it $filled MiB, $took s after the removal $freed MiB; balloon drivers bound in the guest: ${drivers:-?}; exit $rc"
}

run_guest on 90 --free-page-reporting
on_base=$base on_filled=$filled on_freed=$freed on_took=$took on_drivers=$drivers on_rc=$rc
hold=$((on_took + 5 > 20 ? on_took + 5 : 20))
run_guest off "$hold"
off_base=$base off_filled=$filled off_freed=$freed off_took=$took off_drivers=$drivers off_rc=$rc

for run in on off; do
  b=${run}_base f=${run}_filled
  if (( ${!f} - ${!b} >= FILL_MB * 3 / 4 )); then ok "$run: the fill of $FILL_MB MiB made guest RAM resident on the host grow by $(( ${!f} - ${!b} )) MiB"
  else bad "$run: guest RAM resident grew by $(( ${!f} - ${!b} )) MiB for a fill of $FILL_MB MiB (before ${!b} after ${!f})"; tail -5 "$work/$run.out"; fi
done
grown=$((on_filled - on_base)) dropped=$((on_filled - on_freed))
if [ "$on_drivers" = 1 ] && ((grown > 0 && 4 * dropped >= 3 * grown)); then
  ok "with free page reporting, $dropped of the $grown MiB went back to the host within $on_took s of the removal"
else bad "with free page reporting: $dropped of $grown MiB went back in $on_took s (balloon drivers bound: ${on_drivers:-none})"; tail -5 "$work/on.err"; fi
if counts=$(python3 - "$work/on.json" "$dropped" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["balloon"]
dropped = int(sys.argv[2]) << 20
ok = c["reported_bytes"] >= dropped and c["report_chains"] >= 1 and c["rejected_reports"] == 0 and c["discard_errors"] == 0
print(json.dumps(c))
sys.exit(0 if ok else 1)
PY
); then ok "balloon counters: at least the $dropped MiB that went back reported, nothing refused: $counts"
else bad "balloon counters: ${counts:-$(head -c 300 "$work/on.json" 2>/dev/null || echo none)}"; fi
grown=$((off_filled - off_base)) dropped=$((off_filled - off_freed))
if [ "$off_drivers" = 0 ] && ((grown > 0 && 4 * dropped < grown)) && ! grep -q '"balloon"' "$work/off.json"; then
  ok "without it, $((off_freed - off_base)) of the $grown MiB stayed resident for $off_took s after the removal (no balloon device)"
else bad "without free page reporting: $dropped of $grown MiB went back in $off_took s; balloon drivers bound: ${off_drivers:-?}; counters $(head -c 200 "$work/off.json")"; fi
if [ "$on_rc" = 0 ] && [ "$off_rc" = 0 ]; then ok "both guests powered off, exit 0"
else bad "vmm exits: on $on_rc, off $off_rc: $(tail -3 "$work/on.err") $(tail -3 "$work/off.err")"; fi
finish
