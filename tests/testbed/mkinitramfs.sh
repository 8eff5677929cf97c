#!/usr/bin/env bash
# Builds a small test initramfs: busybox-static with its applet links, /dev/console, the given
# script as /init, and extra files.
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
for a in $("$busybox" --list-full); do
  [ -e "$tmp/$a" ] || ln -s /bin/busybox "$tmp/$a"
done
mknod -m 600 "$tmp/dev/console" c 5 1
mknod -m 666 "$tmp/dev/null" c 1 3
install -m 755 "$init" "$tmp/init"
for spec in "$@"; do
  src=${spec%%:*} dst=${spec#*:}
  [ -e "$src" ] || { echo "mkinitramfs: extra file '$src' not found" >&2; exit 1; }
  mkdir -p "$tmp/$(dirname "$dst")"
  cp -a "$src" "$tmp/$dst"
done
(cd "$tmp" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
