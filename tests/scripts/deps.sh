#!/usr/bin/env bash
# Installs every Debian package husk and its tests need, idempotently.
# Also unpacks Debian's generic kernel (linux-image-amd64) into a cache
# directory for the testbed's outer VM; the machine's own /boot is untouched.
set -euo pipefail

CACHE=${HUSK_CACHE:-$HOME/.cache/husk}
PKGS=(
  # guest kernel build
  linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils
  # testbed and peer VMM
  qemu-system-x86 busybox-static cpio kmod zstd
  # container runtime peers and image tools
  containerd runc e2fsprogs erofs-utils iproute2 util-linux procps
  # container networking (CNI bridge/portmap plugins, iptables-legacy in the testbed)
  containernetworking-plugins iptables
  # the tests talk to the VMM control API over its unix socket
  curl
  # rust crates that build C
  pkg-config protobuf-compiler
  # virtiofsd's build (seccomp filter, capability dropping)
  libseccomp-dev libcap-ng-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Outer (L1) kernel for the testbed: the generic flavour (it has 9p as modules).
outer="$CACHE/outer-kernel"
if [ ! -f "$outer/.done" ]; then
  echo "deps: unpacking Debian's generic kernel into $outer"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  [ -f /var/lib/apt/lists/lock ] && ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq
  # linux-image-amd64 is a meta package: resolve the real image package.
  real=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$real" ] || { echo "deps: cannot resolve linux-image-amd64" >&2; exit 1; }
  (cd "$tmp" && apt-get download -qq "$real")
  rm -rf "$outer" && mkdir -p "$outer"
  dpkg-deb -x "$tmp"/"$real"_*.deb "$outer/root"
  kver=$(ls "$outer/root/lib/modules" | head -n1)
  depmod -b "$outer/root" "$kver"
  echo "$kver" >"$outer/version"
  touch "$outer/.done"
fi

# virtiofsd, the virtio-fs backend (one per pod sandbox), from crates.io at a pinned version.
# Built once into the cache, installed where the shim looks for it
# (husk-shim's sharedfs::DEFAULT_VIRTIOFSD); rebuilt only when the version changes.
VIRTIOFSD_VERSION=1.14.0
VIRTIOFSD=${HUSK_VIRTIOFSD:-/usr/local/libexec/husk/virtiofsd}
if [ "$("$VIRTIOFSD" --version 2>/dev/null)" != "virtiofsd $VIRTIOFSD_VERSION" ]; then
  vroot="$CACHE/virtiofsd-$VIRTIOFSD_VERSION"
  if [ ! -x "$vroot/bin/virtiofsd" ]; then
    echo "deps: building virtiofsd $VIRTIOFSD_VERSION (cargo install, a few minutes)"
    nice cargo install --locked --quiet --root "$vroot" virtiofsd --version "$VIRTIOFSD_VERSION"
  fi
  install -D -m 755 "$vroot/bin/virtiofsd" "$VIRTIOFSD"
  echo "deps: installed $("$VIRTIOFSD" --version) at $VIRTIOFSD"
fi

# The agent is linked statically against musl.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi
# `make test` runs clippy and rustfmt.
for c in clippy rustfmt; do
  if command -v rustup >/dev/null && ! rustup component list --installed | grep -q "^$c"; then
    rustup component add "$c"
  fi
done
echo "deps: ok ($(cat "$outer/version"))"
