#!/usr/bin/env bash
# The image cache and containers' own images on disk (issue 20, M4 and M6):
# - containers of more images than shim.image_cache_max_bytes holds: the cache stays within the
#   bound (allocated bytes, counted on disk), the newest image is kept, and the image of a
#   running container is never removed under it (the container still reads its files);
# - a writable rootfs image (ctr run --rootfs) lives under shim.image_work_dir on a disk
#   filesystem (statfs: not tmpfs), `husk ps` reports its bytes, and it is gone after delete;
# - after the shim is SIGKILLed, its image directory is removed (delete action / next start).
# The work directory is on an ext4 filesystem of its own (loop device), as /var/lib/husk on a
# host disk. Needs hardware KVM (run inside tests/testbed/run). 7 VM boots.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup
T=${HUSK_E2E_TIMEOUT:-600}
BOUND_MIB=64

# A disk filesystem: an ext4 loop device where the kernel has ext4; else (the testbed's outer
# VM, whose writable places are all tmpfs and which has no ext4 module) the results share,
# 9p backed by the host's disk.
DISK="$E2E_WORK/disk"
mkdir -p "$DISK"
truncate -s 512M "$E2E_WORK/disk.ext4"
mkfs.ext4 -q -F "$E2E_WORK/disk.ext4"
if mount -o loop "$E2E_WORK/disk.ext4" "$DISK" 2>/dev/null; then
  DISK_FS="ext2/ext3"
  release_disk() { umount "$DISK"; sleep 1; } # the loop device detaches (autoclear)
elif OUT_SHARE=$(awk '$1 == "out" && $3 == "9p" && $4 ~ /^rw/ {print $2; exit}' /proc/mounts) && [ -n "$OUT_SHARE" ]; then
  DISK=$(mktemp -d "$OUT_SHARE/husk-disk.XXXXXX")
  DISK_FS="9p share"
  release_disk() { rm -rf "$DISK"; }
else
  fail "no disk filesystem for the test: no ext4 and no results share"
fi
rm -f "$E2E_WORK/disk.ext4"
log "work directory on $DISK ($DISK_FS)"
# The cache needs no disk for its bound (allocated bytes are counted the same on tmpfs), and
# 9p is slow under emulation: only the work directory goes to the disk filesystem.
CACHE="$E2E_WORK/images-bounded"
WORK="$DISK/work"
# write_husk_config ends with [shim]: the lines appended below land there.
sed -i -e "s|^image_cache_dir = .*|image_cache_dir = \"$CACHE\"|" -e "s|^image_work_dir = .*|image_work_dir = \"$WORK\"|" "$E2E_WORK/husk.toml"
printf 'image_cache_max_bytes = "%sM"\n' "$BOUND_MIB" >>"$E2E_WORK/husk.toml"
[ "$(grep '^\[' "$E2E_WORK/husk.toml" | tail -1)" = "[shim]" ] || fail "the test config does not end with [shim]"

# Five images of ~22 MiB each (20 MiB incompressible; 64M is the smallest bound): two fit the
# bound, three do not.
for n in 1 2 3 4 5; do
  x="$E2E_WORK/extra-$n"
  mkdir -p "$x"
  echo "variant $n" >"$x/marker-$n"
  head -c $((20 << 20)) /dev/urandom >"$x/blob"
  "$E2E_REPO/tests/scripts/busybox-image.sh" "$E2E_WORK/var-$n.tar" "docker.io/library/husk-var-$n:latest" "$x"
  ctr_ images import "$E2E_WORK/var-$n.tar" >/dev/null
  rm -rf "$x" "$E2E_WORK/var-$n.tar"
done

cache_bytes() { find "$CACHE" -maxdepth 1 \( -name '*.ext4' -o -name '*.erofs' \) -printf '%b\n' | awk '{s += $1 * 512} END {print s + 0}'; }
# Which variants the cache holds (by the marker file in each image).
cached_variants() {
  local img
  for img in "$CACHE"/*.ext4; do
    [ -e "$img" ] || continue
    debugfs -R 'ls -p /' "$img" 2>/dev/null | tr '/' '\n' | sed -n 's/^marker-//p'
  done | sort -n | tr '\n' ' '
}

# 1. Variant 1 runs (its image in use); 2..5 each run once. After each, the cache is within
#    the bound and holds the image just used and the running one.
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" docker.io/library/husk-var-1:latest c-var1 sleep 100000 >/dev/null
for n in 2 3 4 5; do
  out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "docker.io/library/husk-var-$n:latest" "c-var$n" cat "/marker-$n")
  assert_eq "variant $n" "$out" "container of image $n"
  bytes=$(cache_bytes)
  held=$(cached_variants)
  log "after image $n: cache $bytes bytes (bound $((BOUND_MIB << 20))), variants [$held]"
  [ "$bytes" -le $((BOUND_MIB << 20)) ] || fail "cache holds $bytes bytes, over the bound of ${BOUND_MIB}M: variants [$held]"
  [[ " $held" == *" $n "* ]] || fail "the newest image ($n) was evicted: [$held]"
  [[ " $held" == *" 1 "* ]] || fail "the image of the running container (1) was evicted: [$held]"
done
[ "$(wc -w <<<"$(cached_variants)")" -lt 5 ] || fail "nothing was evicted: [$(cached_variants)]"
# The running container still reads its (evicted-from-nothing) image.
out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id e1 c-var1 sh -c 'cat /marker-1; md5sum </blob >/dev/null && echo read-ok')
assert_eq "variant 1
read-ok" "$out" "running container's image"
ctr_ task kill -s SIGKILL c-var1
timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep c-var1 | grep -q STOPPED; do sleep 0.5; done"
ctr_ task rm c-var1 >/dev/null
ctr_ containers rm c-var1
log "bounded cache: ok"

# 2. A writable rootfs (ctr run --rootfs DIR): its image is on disk, reported, removed.
R="$E2E_WORK/rootfs-dir"
mkdir -p "$R/bin" "$R/tmp" "$R/proc" "$R/sys" "$R/dev" "$R/etc"
cp "$(command -v busybox)" "$R/bin/busybox"
for a in sh sleep cat echo; do ln -s busybox "$R/bin/$a"; done
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --rootfs "$R" c-rw sleep 100000 >/dev/null
img="$WORK/default/c-rw/rootfs.img"
[ -f "$img" ] || fail "no writable image at $img: $(find "$WORK" 2>&1 | head)"
fstype=$(stat -f -c %T "$img")
[ "$fstype" != tmpfs ] || fail "the writable image $img is on tmpfs"
assert_eq "$(stat -f -c %T "$DISK")" "$fstype" "filesystem of the writable image (the test's disk; 9p reports the host's)"
[ -z "$(find "$E2E_WORK/run-husk" -name '*.img' 2>/dev/null)" ] || fail "an image under the state dir (tmpfs): $(find "$E2E_WORK/run-husk" -name '*.img')"
out=$(timeout "$T" ctr -a "$CTR_ADDR" task exec --exec-id w1 c-rw sh -c 'echo written >/tmp/f && cat /tmp/f')
assert_eq written "$out" "write in the writable rootfs"
ps_line=$("$HUSK_BIN_DIR/husk" --config "$E2E_WORK/husk.toml" ps | awk '$1 == "c-rw"')
disk=$(awk '{print $7}' <<<"$ps_line")
[ -n "$disk" ] && [ "${disk%M}" -gt 0 ] || fail "husk ps does not report the pod's image bytes: [$ps_line]"
ctr_ task kill -s SIGKILL c-rw
timeout 120 sh -c "until ctr -a '$CTR_ADDR' task ls | grep c-rw | grep -q STOPPED; do sleep 0.5; done"
ctr_ task rm c-rw >/dev/null
ctr_ containers rm c-rw
[ ! -e "$img" ] && [ ! -e "$WORK/default/c-rw" ] || fail "the writable image is left after delete: $(ls -la "$WORK/default" 2>&1)"
log "writable image on disk: ok"

# 3. The shim is SIGKILLed: its image directory does not outlive the cleanup.
timeout "$T" ctr -a "$CTR_ADDR" run -d --runtime "$RUNTIME" --rootfs "$R" c-crash sleep 100000 >/dev/null
[ -f "$WORK/default/c-crash/rootfs.img" ] || fail "no image of c-crash"
shim=$(cat "$E2E_WORK"/run-husk/default/c-crash/state.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shim_pid"])')
kill -KILL "$shim"
# containerd cleans up after the dead shim (its delete action) and drops the task: wait until
# c-crash is no longer listed as anything but STOPPED.
timeout 120 sh -c "while ctr -a '$CTR_ADDR' task ls | awk '\$1 == \"c-crash\" && \$3 != \"STOPPED\" {f = 1} END {exit !f}'; do sleep 0.5; done" ||
  fail "containerd still lists c-crash as running 120 s after its shim was killed: $(ctr_ task ls)"
ctr_ task rm -f c-crash >/dev/null 2>&1 || true
ctr_ containers rm c-crash
# Whatever the delete action left, the next sandbox's start sweeps (its lock died with the shim).
out=$(timeout "$T" ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$IMAGE" c-next echo next)
assert_eq next "$out" "start after a crashed shim"
[ ! -e "$WORK/default/c-crash" ] || fail "the crashed shim's image directory is left: $(ls -la "$WORK/default/c-crash")"
left=$(find "$WORK" "$CACHE" -name '.*' 2>/dev/null)
[ -z "$left" ] || fail "temporary files left: $left"
log "crashed shim cleanup: ok"

[ -z "$(ls -A "$WORK" 2>/dev/null)" ] || fail "image work directory not empty: $(ls -A "$WORK")"
release_disk
leak_check
