#!/usr/bin/env bash
# Prepares the testbed's outer VM: Debian's generic kernel (unpacked by tests/scripts/deps.sh)
# and an initramfs of busybox-static, the modules that give KVM/9p/tun/vsock/overlay/loop,
# and l1-init.sh. Cached by the hash of its inputs; prints the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}
kdir="$CACHE/outer-kernel"
[ -f "$kdir/.done" ] || "$here/../scripts/deps.sh" >&2
kver=$(cat "$kdir/version")
# Load order from modules.dep (dependencies first). ccp before kvm-amd.
MODULES="irqbypass kvm ccp kvm-amd virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
virtio_pci 9pnet 9pnet_virtio netfs fscache 9p tun veth overlay loop vsock vhost_iotlb vhost
vmw_vsock_virtio_transport_common vhost_vsock tap vhost_net llc stp bridge"
busybox=$(command -v busybox)
key=$( (cat "$here/l1-init.sh" "$0"; echo "$kver"; sha256sum "$busybox") | sha256sum | cut -c1-16)
out="$CACHE/testbed/l1-initramfs-$key.cpio.gz"
mkdir -p "$CACHE/testbed"
if [ ! -f "$out" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/bin" "$tmp/modules" "$tmp/tmp"
  cp "$busybox" "$tmp/bin/busybox"
  cp "$here/l1-init.sh" "$tmp/init"
  chmod 755 "$tmp/init"
  : >"$tmp/modules.order"
  for m in $MODULES; do
    f=$(find "$kdir/root/lib/modules/$kver" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { echo "testbed: module $m not found in $kdir" >&2; exit 1; }
    case "$f" in
      *.ko.xz) xz -dc "$f" >"$tmp/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$tmp/modules/$m.ko" ;;
      *) cp "$f" "$tmp/modules/$m.ko" ;;
    esac
    echo "$m.ko" >>"$tmp/modules.order"
  done
  (cd "$tmp" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -1 >"$out.$$")
  mv "$out.$$" "$out"
fi
echo "$out"
