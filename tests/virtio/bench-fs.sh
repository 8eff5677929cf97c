#!/usr/bin/env bash
# virtio-fs against the host and against virtio-blk, and virtiofsd's cache and xattr settings
# against each other, in one run. The host runs the workload first, on a directory of the
# same file system the shares and the disk image live on (the testbed's /tmp); then one guest
# (husk-vmm, 1 vCPU, 256 MiB) runs it on one virtio-blk disk (ext4 image in a disk slot
# attached once the guest is up, the peer) and
# one virtio-fs device per virtiofsd setting, each virtiofsd sandboxed as the shim runs it
# (--sandbox namespace, --seccomp kill, --thread-pool-size 0) on its own host directory:
#   auto          --cache auto              (metadata 1 s, data revalidated on open)
#   auto+ra       --cache auto, with the read-ahead the agent sets (below): what pods run
#   auto+xattr    --cache auto --xattr
#   metadata      --cache metadata          (no data cache)
#   never         --cache never             (nothing cached)
#   always        --cache always            (never revalidated: host changes can stay unseen)
# BENCH_FS_SETTINGS replaces that list: space-separated NAME=FLAGS, the flags' words joined
# with commas (e.g. "auto=--cache=auto fh=--cache=auto,--inode-file-handles=never"). A NAME
# ending in "+ra" also gets the guest's read-ahead the agent sets on its virtio-fs mount
# (BENCH_FS_RA_KB, default 1024 KiB, through /sys/class/bdi/MAJ:MIN/read_ahead_kb).
# On each, the guest measures (BENCH_FS_REPS rounds, default 3, targets in rotating order):
#   write  BENCH_FS_MB (default 16) MiB sequentially, 1 MiB blocks, fsync    -> MiB/s
#   read   the file after dropping the guest's caches (cold), then again (warm) -> MiB/s
#   create BENCH_FS_FILES (default 300) small files, one shell, no forks     -> files/s
#   stat   all of them (`ls -l`), caches dropped first (cold), then warm     -> files/s
#   unlink all of them (`rm -r`)                                            -> files/s
# and prints the median of each figure per target with its ratios to the host's and to
# virtio-blk's (>1: faster), then each virtiofsd's memory (parent + sandboxed server) after the
# work: RSS and its own part (RssAnon + RssFile; the rest is guest RAM it maps to serve the
# queues, the VM's memory), and finally issue 19's targets for the setting pods run
# (auto+ra; auto when the settings given leave it out): sequential read at least 0.7x the host's, metadata (create, stat, unlink) at least
# 0.3x, virtiofsd under 10 MiB of its own memory.
# Everything runs in one VM at once, so every figure shares the same emulation overheads.
# BENCH_FS_RESTORE=1 runs that VM as pods run: booted, saved before the guest mounts the
# shares, and restored (its RAM the snapshot's memory file mapped copy-on-write) with new
# virtiofsds, so husk-vmm relays every request (devices::virtio::fs::relay); run once with and
# once without to see what the relay costs.
# Run: tests/virtio/build.sh && tests/testbed/run --timeout 3600 -- tests/virtio/bench-fs.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
VIRTIOFSD=${HUSK_VIRTIOFSD:-/usr/local/libexec/husk/virtiofsd}
MB=${BENCH_FS_MB:-16}
FILES=${BENCH_FS_FILES:-300}
REPS=${BENCH_FS_REPS:-3}
RA_KB=${BENCH_FS_RA_KB:-1024}
RESTORE=${BENCH_FS_RESTORE:-0}
[[ "$RESTORE" =~ ^[01]$ ]] || { echo "bench-fs: BENCH_FS_RESTORE must be 0 or 1, got '$RESTORE'"; exit 2; }
for v in MB FILES REPS RA_KB; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-fs: BENCH_FS_$v must be a positive integer, got '${!v}'"; exit 2; }
done
[ -x "$VIRTIOFSD" ] || { echo "bench-fs: no virtiofsd at $VIRTIOFSD (make deps)"; exit 1; }
[ -x "$VSOCK_TOOL" ] || { echo "bench-fs: no vsock tool at $VSOCK_TOOL (tests/virtio/build.sh)"; exit 1; }
# name:virtiofsd flags (the tag is the name)
SETTINGS=("auto:--cache=auto" "auto+ra:--cache=auto" "auto+xattr:--cache=auto --xattr" "metadata:--cache=metadata" "never:--cache=never" "always:--cache=always")
if [ -n "${BENCH_FS_SETTINGS:-}" ]; then
  SETTINGS=()
  for s in $BENCH_FS_SETTINGS; do
    [[ "$s" =~ ^[a-z0-9+-]{1,30}=--[a-z0-9=,-]+$ ]] || { echo "bench-fs: BENCH_FS_SETTINGS entry '$s' is not NAME=--FLAG[,--FLAG...]"; exit 2; }
    SETTINGS+=("${s%%=*}:$(tr ',' ' ' <<<"${s#*=}")")
  done
fi
vfs_pids=()
cleanup_bench() {
  for p in "${vfs_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  cleanup_vmm
}
trap cleanup_bench EXIT

truncate -s $((MB * 2 + 64 + FILES / 8))M "$work/blk.img"
mkfs.ext4 -q -F "$work/blk.img" || { echo "bench-fs: mkfs.ext4 failed"; exit 1; }
# start_virtiofsds: one virtiofsd per setting, in vfs_pids; their --fs arguments in fs_args.
start_virtiofsds() {
  local s name flags i
  vfs_pids=() fs_args=()
  for s in "${SETTINGS[@]}"; do
    name=${s%%:*} flags=${s#*:}
    mkdir -p "$work/share-$name"
    rm -f "$work/$name.sock"
    # shellcheck disable=SC2086 # flags are words
    "$VIRTIOFSD" --socket-path "$work/$name.sock" --shared-dir "$work/share-$name" --sandbox namespace \
      --seccomp kill --thread-pool-size 0 --log-level warn $flags 2>>"$work/virtiofsd.err" &
    vfs_pids+=($!)
    for ((i = 0; i < 100; i++)); do [ -S "$work/$name.sock" ] && break; sleep 0.1; done
    [ -S "$work/$name.sock" ] || { echo "bench-fs: virtiofsd $name did not start: $(tail -3 "$work/virtiofsd.err")"; exit 1; }
    fs_args+=(--fs "tag=$name,socket=$work/$name.sock")
  done
}
start_virtiofsds
targets="blk"
for s in "${SETTINGS[@]}"; do targets="$targets ${s%%:*}"; done

# The host's run: the guest's workload below in bash, on the same file system.
now() { date +%s.%N; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
host_one() {
  local d=$work/host i t0 t1 t2 t3 t4 t5 t6 t7 t8 t9
  mkdir -p "$d"
  t0=$(now); dd if=/dev/zero of="$d/big" bs=1048576 count="$MB" conv=fsync 2>/dev/null || echo "HUSK-FSB-ERROR write host"
  t1=$(now); drop; t2=$(now); dd if="$d/big" of=/dev/null bs=1048576 2>/dev/null
  t3=$(now); dd if="$d/big" of=/dev/null bs=1048576 2>/dev/null
  t4=$(now); mkdir "$d/small"; for ((i = 0; i < FILES; i++)); do echo "$i" >"$d/small/f$i"; done; sync
  t5=$(now); drop; t6=$(now); [ "$(ls -l "$d/small" | wc -l)" = $((FILES + 1)) ] || echo "HUSK-FSB-ERROR stat host"
  t7=$(now); ls -l "$d/small" >/dev/null
  t8=$(now); rm -r "$d/small"; sync
  t9=$(now); rm "$d/big"
  echo "HUSK-FSB host $1 $t0 $t1 $t2 $t3 $t4 $t5 $t6 $t7 $t8 $t9"
}
for ((r = 1; r <= REPS; r++)); do host_one "$r"; done >"$work/host.txt"

mkinit_x benchfs "mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
now() { vsock-tool now; }
echo HUSK-FSB-SAVE-ME; vsock-tool wait 5098
i=0; while [ \$(cat /sys/block/vda/size) = 0 ] && [ \$i -lt 300 ]; do sleep 0.1; i=\$((i + 1)); done
mkdir -p /mnt/blk && mount -t ext4 /dev/vda /mnt/blk || echo HUSK-FSB-ERROR mount blk
for t in $targets; do [ \$t = blk ] && continue; mkdir -p /mnt/\$t && mount -t virtiofs \$t /mnt/\$t || echo HUSK-FSB-ERROR mount \$t; done
for t in $targets; do
  case \$t in *+ra) ;; *) continue ;; esac
  dev=\$(awk -v m=/mnt/\$t '\$5 == m {print \$3}' /proc/self/mountinfo)
  echo $RA_KB >/sys/class/bdi/\$dev/read_ahead_kb || echo HUSK-FSB-ERROR read-ahead \$t \$dev
done
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
one() {
  d=/mnt/\$1
  t0=\$(now); dd if=/dev/zero of=\$d/big bs=1048576 count=$MB conv=fsync 2>/dev/null || echo HUSK-FSB-ERROR write \$1
  t1=\$(now); drop; t2=\$(now); dd if=\$d/big of=/dev/null bs=1048576 2>/dev/null
  t3=\$(now); dd if=\$d/big of=/dev/null bs=1048576 2>/dev/null
  t4=\$(now); mkdir \$d/small; i=0; while [ \$i -lt $FILES ]; do echo \$i >\$d/small/f\$i; i=\$((i + 1)); done; sync
  t5=\$(now); drop; t6=\$(now); [ \$(ls -l \$d/small | wc -l) = \$(($FILES + 1)) ] || echo HUSK-FSB-ERROR stat \$1
  t7=\$(now); ls -l \$d/small >/dev/null
  t8=\$(now); rm -r \$d/small; sync
  t9=\$(now); rm \$d/big
  echo \"HUSK-FSB \$1 \$2 \$t0 \$t1 \$t2 \$t3 \$t4 \$t5 \$t6 \$t7 \$t8 \$t9\"
}
r=1; while [ \$r -le $REPS ]; do
  set -- $targets; k=\$r; while [ \$k -gt 1 ]; do x=\$1; shift; set -- \"\$@\" \$x; k=\$((k - 1)); done
  for t in \"\$@\"; do one \$t \$r; done
  r=\$((r + 1))
done
echo HUSK-FSB-DONE
vsock-tool wait 5099
poweroff -f" "$VSOCK_TOOL:/bin/vsock-tool"

start_vm benchfs "$work/benchfs.cpio.gz" --disk-slots 1 "${fs_args[@]}" --vsock "cid=3,uds=$work/v.sock" --api-sock "$work/api.sock"
api() { curl -s -w ' %{http_code}' --unix-socket "$work/api.sock" -X PUT "http://localhost/vm/$1" ${2:+-d "$2"}; }
# The guest waits before its first use of the shares and the disk (a slot, attached now:
# a VM with a boot disk cannot be saved).
for ((i = 0; i < 3000; i++)); do grep -aq '^HUSK-FSB-SAVE-ME' "$work/benchfs.out" 2>/dev/null && break; sleep 0.1; done
if [ "$RESTORE" = 1 ]; then
  mkdir "$work/snap"
  r=$(api pause) && [[ "$r" == *" 200" ]] && r=$(api snapshot "{\"dir\":\"$work/snap\"}") && [[ "$r" == *" 200" ]] \
    || { echo "bench-fs: cannot snapshot the VM before the mounts: $r"; tail -5 "$work/benchfs.err"; exit 1; }
  kill -KILL "$vmm_pid"; wait "$vmm_pid" 2>/dev/null
  for p in "${vfs_pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -f "$work/api.sock" "$work/v.sock"
  start_virtiofsds
  "$VMM" --restore "$work/snap" "${fs_args[@]}" --vsock "cid=3,uds=$work/v.sock" --api-sock "$work/api.sock" >>"$work/benchfs.out" 2>>"$work/benchfs.err" &
  vmm_pid=$!
  for ((i = 0; i < 300; i++)); do [ -S "$work/api.sock" ] && [ -S "$work/v.sock" ] && break; sleep 0.1; done
  echo "bench-fs: the VM runs restored from a snapshot taken before the mounts (virtio-fs relayed)"
fi
r=$(api disks/slot0 "{\"path\":\"$work/blk.img\",\"id\":\"blk\"}")
[[ "$r" == *" 200" ]] || { echo "bench-fs: cannot attach the disk: $r"; tail -5 "$work/benchfs.err"; exit 1; }
timeout -k 5 60 python3 "$vdir/vsock_host.py" poke "$work/v.sock" 5098 >/dev/null 2>&1 || { echo "bench-fs: the guest does not answer on vsock port 5098"; tail -5 "$work/benchfs.err"; exit 1; }
for ((i = 0; i < 36000; i++)); do
  grep -aq '^HUSK-FSB-DONE' "$work/benchfs.out" 2>/dev/null && break
  kill -0 "$vmm_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$RESTORE" = 1 ]; then
  curl -s --unix-socket "$work/api.sock" http://localhost/vm/counters | python3 -c 'import json, sys
c = json.load(sys.stdin)
print("bench-fs: relayed requests per device: " + ", ".join("%s %d (relaying %d)" % (k[3:], v["relayed_requests"], v["relaying"]) for k, v in sorted(c.items()) if k.startswith("fs.")))'
fi
# virtiofsd's memory after the work: the process started plus its sandboxed server.
rss_lines=()
for idx in "${!SETTINGS[@]}"; do
  name=${SETTINGS[$idx]%%:*} p=${vfs_pids[$idx]} kb=0 own=0
  for q in $p $(pgrep -P "$p"); do
    kb=$((kb + $(awk '/^VmRSS/ {print $2}' "/proc/$q/status" 2>/dev/null || echo 0)))
    own=$((own + $(awk '/^Rss(Anon|File):/ {s += $2} END {print s + 0}' "/proc/$q/status" 2>/dev/null || echo 0)))
  done
  rss_lines+=("$name $kb $own")
done
timeout -k 5 60 python3 "$vdir/vsock_host.py" poke "$work/v.sock" 5099 >/dev/null 2>&1
wait_vm 120
{ cat "$work/host.txt"; tr -d '\r' <"$work/benchfs.out" | grep -a '^HUSK-FSB'; } >"$work/fsb.txt"
if grep -q 'HUSK-FSB-ERROR' "$work/fsb.txt" || ! grep -q '^HUSK-FSB-DONE' "$work/fsb.txt"; then
  echo "bench-fs: the guest's run failed (exit $rc):"; grep -a 'HUSK-FSB-ERROR' "$work/fsb.txt"; tail -15 "$work/benchfs.out"; tail -5 "$work/benchfs.err"
  exit 1
fi
printf '%s\n' "${rss_lines[@]}" >"$work/rss.txt"
python3 - "$work/fsb.txt" "$work/rss.txt" "$MB" "$FILES" "$REPS" <<'PY'
import statistics, sys
fsb, rss, mb, files, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
figs = {}  # target -> figure -> [values]
order = []
for line in open(fsb):
    f = line.split()
    if f[0] != "HUSK-FSB":
        continue
    t, ts = f[1], [float(x) for x in f[3:13]]
    if t not in order:
        order.append(t)
    d = lambda a, b: max(ts[b] - ts[a], 1e-6)
    v = figs.setdefault(t, {})
    for name, val in (("write MiB/s", mb / d(0, 1)), ("read cold MiB/s", mb / d(2, 3)), ("read warm MiB/s", mb / d(3, 4)),
                      ("create files/s", files / d(4, 5)), ("stat cold files/s", files / d(6, 7)),
                      ("stat warm files/s", files / d(7, 8)), ("unlink files/s", files / d(8, 9))):
        v.setdefault(name, []).append(val)
names = list(figs["blk"].keys())
med = {t: {n: statistics.median(figs[t][n]) for n in names} for t in order}
print(f"bench-fs: {mb} MiB file, {files} small files, {reps} round(s); median per figure, then its ratio to the host's and to virtio-blk's")
cols = [t for t in order]
print("%-18s" % "figure" + "".join("%12s" % t for t in cols))
for n in names:
    print("%-18s" % n + "".join("%12.1f" % med[t][n] for t in cols))
for peer in ("host", "blk"):
    print(f"ratio to {peer}:")
    for n in names:
        print("%-18s" % n + "".join("%12s" % ("" if t == peer else f"{med[t][n] / med[peer][n]:.2f}x") for t in cols))
print("spread of the rounds (min-max):")
for n in names:
    print("%-18s" % n + "".join("%12s" % f"{min(figs[t][n]):.0f}-{max(figs[t][n]):.0f}" for t in cols))
mem = {}
for l in open(rss):
    if l.strip():
        name, kb, own = l.split()
        mem[name] = (int(kb), int(own))
print("virtiofsd memory after the work (parent + sandboxed server): " + ", ".join(f"{k} RSS {v[0] / 1024:.1f} MiB (own {v[1] / 1024:.1f})" for k, v in mem.items()))
# Issue 19's targets, for the setting pods run (the shim's virtiofsd, the agent's read-ahead).
t = "auto+ra" if "auto+ra" in med else "auto"
if t not in med:
    print("no auto or auto+ra setting in this run: issue 19's targets not checked")
    sys.exit(0)
checks = [(f"{n} vs host", med[t][n] / med["host"][n], 0.7) for n in ("read cold MiB/s", "read warm MiB/s")]
checks += [(f"{n} vs host", med[t][n] / med["host"][n], 0.3) for n in ("create files/s", "stat cold files/s", "stat warm files/s", "unlink files/s")]
for what, v, want in checks:
    print(f"target {t}: {what} {v:.2f}x, want >= {want}x: {'met' if v >= want else 'MISSED'}")
if t in mem:
    own = mem[t][1] / 1024
    print(f"target {t}: virtiofsd own memory {own:.1f} MiB, want < 10 MiB: {'met' if own < 10 else 'MISSED'}")
PY
