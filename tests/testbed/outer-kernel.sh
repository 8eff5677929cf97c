#!/usr/bin/env bash
# Prepares the testbed's outer VM: Debian's generic kernel (unpacked by tests/scripts/deps.sh)
# and an initramfs of busybox-static, the modules (KVM, 9p, tun/vsock/overlay/loop, netfilter,
# tc), l1-init.sh as /init and l1-stage2.sh, which /init runs in the new root. Cached by the
# hash of its inputs; prints the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}
kdir="$CACHE/outer-kernel"
[ -f "$kdir/.done" ] || "$here/../scripts/deps.sh" >&2
kver=$(cat "$kdir/version")
# The modules the outer VM loads (dependencies are added from modules.dep, loaded first):
# KVM, virtio/9p for the shares (9pnet_virtio, the transport, is no dependency of 9p), tun/veth/bridge/vhost for guest networking, overlay (the new
# root, containerd's snapshots), loop; netfilter and tc for container networking (the CNI
# bridge and portmap plugins through iptables-legacy, tc redirects between a veth and a tap).
# crc32c_generic: libcrc32c (nf_conntrack) needs a crc32c algorithm, a softdep modules.dep does
# not list ("Unknown symbol crc32c" without it). IPv4 only: portmap skips ip6tables when
# `ip6tables -t nat -L` fails, which it does without ip6_tables.
MODULES="kvm-amd virtio_pci 9pnet_virtio 9p tun veth overlay loop vhost_vsock vhost_net bridge
crc32c_generic nf_conntrack nf_nat x_tables ip_tables iptable_nat iptable_filter xt_MASQUERADE xt_nat
xt_mark xt_comment xt_multiport xt_addrtype xt_conntrack xt_tcpudp br_netfilter
sch_ingress act_mirred cls_u32 cls_matchall"
busybox=$(command -v busybox)
key=$( (cat "$here/l1-init.sh" "$here/l1-stage2.sh" "$0"; echo "$kver"; sha256sum "$busybox") | sha256sum | cut -c1-16)
out="$CACHE/testbed/l1-initramfs-$key.cpio.gz"
mkdir -p "$CACHE/testbed"
if [ ! -f "$out" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/bin" "$tmp/modules" "$tmp/tmp"
  cp "$busybox" "$tmp/bin/busybox"
  cp "$here/l1-init.sh" "$tmp/init"
  cp "$here/l1-stage2.sh" "$tmp/stage2.sh"
  chmod 755 "$tmp/init" "$tmp/stage2.sh"
  mdir="$kdir/root/lib/modules/$kver"
  # Load order: each module's dependencies from modules.dep, which lists them last-loaded
  # first (as modprobe reads it), then the module; each module once.
  awk -v want="$MODULES" '
    { n = $1; sub(/:$/, "", n); path[base(n)] = n; deps[base(n)] = ""
      for (i = NF; i >= 2; i--) deps[base(n)] = deps[base(n)] " " base($i) }
    function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); return p }
    function add(m) { if (!(m in path)) { print "testbed: module " m " not in modules.dep" > "/dev/stderr"; bad = 1; return }
      if (!(m in seen)) { seen[m] = 1; print path[m] } }
    END { k = split(want, w, /[ \n]+/)
      for (j = 1; j <= k; j++) { if (w[j] == "") continue
        if (w[j] in path) { d = split(deps[w[j]], ds, " "); for (i = 1; i <= d; i++) add(ds[i]) }
        add(w[j]) }
      exit bad }' "$mdir/modules.dep" >"$tmp/paths" || exit 1
  : >"$tmp/modules.order"
  while read -r rel; do
    m=$(basename "$rel"); m=${m%%.ko*}
    f="$mdir/$rel"
    case "$f" in
      *.ko.xz) xz -dc "$f" >"$tmp/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$tmp/modules/$m.ko" ;;
      *) cp "$f" "$tmp/modules/$m.ko" ;;
    esac
    echo "$m.ko" >>"$tmp/modules.order"
  done <"$tmp/paths"
  rm "$tmp/paths"
  (cd "$tmp" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -1 >"$out.$$")
  mv "$out.$$" "$out"
fi
echo "$out"
