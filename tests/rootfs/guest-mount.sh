#!/bin/sh
# End-to-end check of husk-rootfs outputs against the real guest kernel, without KVM:
# QEMU (TCG) microvm boots build/kernel/bzImage with an initramfs made by `husk-rootfs
# initramfs` (busybox-static as /init, to script the checks), and three virtio-mmio disks made
# by `husk-rootfs image`: ext4 from a directory (mounted read-write), erofs from OCI layers with
# a whiteout, and erofs from an overlay mount through the cache. Takes a few seconds.
# Usage: tests/rootfs/guest-mount.sh   (needs root for the overlay view; `make kernel` first)
set -eu
cd "$(dirname "$0")/../.."
KERNEL=${KERNEL:-build/kernel/bzImage}
[ -f "$KERNEL" ] || { echo "guest-mount: no kernel at $KERNEL (run make kernel)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q -p husk-rootfs --bin husk-rootfs
B="$CARGO_TARGET_DIR/debug/husk-rootfs"
T=$(mktemp -d /tmp/husk-guest-mount.XXXXXX)
trap 'rm -rf "$T"' EXIT

mkdir -p "$T/tree/etc" "$T/bin" "$T/etc" "$T/l1/etc" "$T/l2/etc" "$T/upper" "$T/layer/etc"
echo from-dir > "$T/tree/etc/marker"
echo from-layer > "$T/layer/etc/marker"
echo hidden > "$T/layer/etc/gone"
tar -C "$T/layer" -czf "$T/base.tgz" etc
mkdir -p "$T/layer2/etc" && : > "$T/layer2/etc/.wh.gone"
tar -C "$T/layer2" -cf "$T/top.tar" etc
echo lower1 > "$T/l1/etc/one"
echo lower2 > "$T/l2/etc/two"
ln -s /init "$T/bin/sh"
ln -s /init "$T/bin/busybox"
cat > "$T/etc/inittab" <<'TAB'
::sysinit:/bin/sh -c 'busybox mount -t devtmpfs dev /dev; cd /mnt; busybox mkdir a b c; busybox mount -t ext4 /dev/vda a && busybox cat a/etc/marker && echo rw > a/written && busybox umount a && echo CHECK-EXT4-RW; busybox mount -t erofs -o ro /dev/vdb b && busybox cat b/etc/marker && ! busybox test -e b/etc/gone && echo CHECK-EROFS-LAYERS; busybox mount -t erofs -o ro /dev/vdc c && busybox cat c/etc/one c/etc/two && echo CHECK-EROFS-OVERLAY; busybox reboot -f'
TAB
"$B" initramfs --agent /bin/busybox --add "$T/etc/inittab:/etc/inittab" --add "$T/bin:/bin" -o "$T/initramfs.cpio.gz" >/dev/null
"$B" image --from-dir "$T/tree" --fstype ext4 -o "$T/a.ext4" >/dev/null
"$B" image --layer "$T/base.tgz" --layer "$T/top.tar" --fstype erofs -o "$T/b.erofs" >/dev/null
"$B" image --mount "overlay:overlay:lowerdir=$T/l2:$T/l1,upperdir=$T/upper,workdir=$T/upper" \
    --fstype erofs --cache "$T/cache" -o "$T/c.erofs" >/dev/null

timeout 120 qemu-system-x86_64 -accel tcg -M microvm,acpi=off,x-option-roms=off,rtc=off -m 256 \
    -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$KERNEL" \
    -initrd "$T/initramfs.cpio.gz" \
    -drive id=a,file="$T/a.ext4",format=raw,if=none -device virtio-blk-device,drive=a \
    -drive id=b,file="$T/b.erofs",format=raw,if=none,readonly=on -device virtio-blk-device,drive=b \
    -drive id=c,file="$T/c.erofs",format=raw,if=none,readonly=on -device virtio-blk-device,drive=c \
    -append "console=ttyS0 reboot=t panic=-1 quiet" > "$T/console.log" 2>&1 || true
fail=0
for check in CHECK-EXT4-RW CHECK-EROFS-LAYERS CHECK-EROFS-OVERLAY; do
    if grep -q "$check" "$T/console.log"; then echo "ok   $check"; else echo "FAIL $check"; fail=1; fi
done
if [ $fail -ne 0 ]; then echo "--- guest console ---"; cat "$T/console.log"; exit 1; fi
# The guest's write landed in the (sparse) ext4 image.
if debugfs -R 'cat /written' "$T/a.ext4" 2>/dev/null | grep -q rw; then
    echo "ok   guest write visible in the ext4 image"
else
    echo "FAIL guest write not in the ext4 image"; exit 1
fi
