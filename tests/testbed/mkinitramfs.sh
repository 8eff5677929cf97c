#!/usr/bin/env bash
# Builds a small test initramfs: busybox-static, /dev/console, the given script run as /init
# (after busybox has installed its applet links), and extra files.
#   mkinitramfs.sh OUT.cpio.gz INIT_SCRIPT [SRC:DEST]...
set -euo pipefail
out=${1:?usage: mkinitramfs.sh OUT.cpio.gz INIT_SCRIPT [SRC:DEST]...}
init=${2:?usage: mkinitramfs.sh OUT.cpio.gz INIT_SCRIPT [SRC:DEST]...}
shift 2
[ -f "$init" ] || { echo "mkinitramfs: init script '$init' not found" >&2; exit 1; }
busybox=$(command -v busybox) || { echo "mkinitramfs: busybox-static not installed (make deps)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,etc}
cp "$busybox" "$tmp/bin/busybox"
ln -s busybox "$tmp/bin/sh"
mknod -m 600 "$tmp/dev/console" c 5 1
mknod -m 666 "$tmp/dev/null" c 1 3
# The applet links are made by the guest at boot (one process) rather than here: under the
# testbed's emulation each `ln` fork costs tens of milliseconds.
install -m 755 "$init" "$tmp/init.test"
printf '#!/bin/busybox sh\n/bin/busybox --install -s\nexec /init.test "$@"\n' >"$tmp/init"
chmod 755 "$tmp/init"
for spec in "$@"; do
  src=${spec%%:*} dst=${spec#*:}
  [ -e "$src" ] || { echo "mkinitramfs: extra file '$src' not found" >&2; exit 1; }
  mkdir -p "$tmp/$(dirname "$dst")"
  cp -a "$src" "$tmp/$dst"
done
(cd "$tmp" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
