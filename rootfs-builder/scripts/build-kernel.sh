#!/usr/bin/env bash
# Builds the husk guest kernel (vmlinux ELF and bzImage) from Debian's linux-source-6.1
# with the fragment config/kernel/husk.config merged over tinyconfig.
# Cached by the hash of the fragment, this script and the source tarball's version:
# a second run with the same inputs only copies the outputs.
# Usage: build-kernel.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: build-kernel.sh OUTDIR}
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}
src_tar=/usr/src/linux-source-6.1.tar.xz
frag="$repo/config/kernel/husk.config"

[ -f "$src_tar" ] || { echo "kernel: $src_tar missing; run 'make deps'" >&2; exit 1; }
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
# Bump RECIPE when a change to this script changes what it builds.
RECIPE=1
key=$( (cat "$frag"; echo "$src_ver recipe=$RECIPE") | sha256sum | cut -c1-16)
cached="$CACHE/kernel/$key"

if [ ! -f "$cached/.done" ]; then
  echo "kernel: building $key (linux-source-6.1 $src_ver); takes several minutes"
  start=$(date +%s)
  srcdir="$CACHE/kernel-src/$src_ver"
  if [ ! -f "$srcdir/.done" ]; then
    rm -rf "$srcdir" && mkdir -p "$srcdir"
    tar -xf "$src_tar" -C "$srcdir" --strip-components=1
    touch "$srcdir/.done"
  fi
  obj="$CACHE/kernel-obj/$key"
  rm -rf "$obj" && mkdir -p "$obj"
  make -s -C "$srcdir" O="$obj" tinyconfig >/dev/null
  "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null
  make -s -C "$srcdir" O="$obj" olddefconfig >/dev/null
  # Every option the fragment asks for must have survived olddefconfig.
  bad=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=n) opt=${line%=n}; grep -q "^$opt=" "$obj/.config" && { echo "kernel: $opt still set" >&2; bad=1; } ;;
      CONFIG_*) grep -qx "$line" "$obj/.config" || { echo "kernel: '$line' did not stick (missing dependency?)" >&2; bad=1; } ;;
    esac
  done < <(grep -E '^CONFIG_' "$frag")
  [ "$bad" = 0 ] || exit 1
  make -s -C "$srcdir" O="$obj" -j"$(nproc)" vmlinux bzImage KBUILD_BUILD_TIMESTAMP="2026-01-01 00:00:00 UTC" KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk
  mkdir -p "$cached.tmp"
  cp "$obj/vmlinux" "$cached.tmp/vmlinux"
  cp "$obj/arch/x86/boot/bzImage" "$cached.tmp/bzImage"
  cp "$obj/.config" "$cached.tmp/config"
  make -s -C "$srcdir" O="$obj" kernelrelease >"$cached.tmp/release"
  touch "$cached.tmp/.done"
  rm -rf "$cached" && mv "$cached.tmp" "$cached"
  rm -rf "$obj"
  echo "kernel: built in $(( $(date +%s) - start )) s"
else
  echo "kernel: cached $key"
fi
mkdir -p "$out"
cp "$cached/vmlinux" "$cached/bzImage" "$cached/config" "$cached/release" "$out/"
echo "kernel: $out/vmlinux $out/bzImage ($(cat "$out/release"))"
