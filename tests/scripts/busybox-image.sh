#!/usr/bin/env bash
# Builds an OCI image layout tar of busybox-static (one layer, no registry) for `ctr images import`.
#   busybox-image.sh OUT.tar [NAME [EXTRA_DIR]]  NAME default docker.io/library/husk-busybox:latest;
#   EXTRA_DIR's content is added to the root (variants of the image with distinct content)
# The image: /bin/busybox with applet links, /etc/passwd with root and user (1000:1000),
# config Env PATH, Cmd ["sh"], WorkingDir "/".
set -euo pipefail
out=${1:?usage: busybox-image.sh OUT.tar [NAME]}
name=${2:-docker.io/library/husk-busybox:latest}
busybox=$(command -v busybox) || { echo "busybox-image: busybox-static not installed (make deps)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r="$tmp/rootfs"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,home/user,var}
chmod 1777 "$r/tmp"
cp "$busybox" "$r/bin/busybox"
# One process for the ~270 applet links (a fork each costs ~75 ms in the testbed's TCG VM).
"$busybox" --list | BIN="$r/bin" perl -nle 'symlink("busybox", "$ENV{BIN}/$_") or $!{EEXIST} or die "$ENV{BIN}/$_: $!\n"'
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\nwheel:x:10:user\nnogroup:x:65534:\n' >"$r/etc/group"
chown 1000:1000 "$r/home/user"
[ -z "${3:-}" ] || cp -a "$3/." "$r/"
blobs="$tmp/oci/blobs/sha256"
mkdir -p "$blobs"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$r" -cf "$tmp/layer.tar" .
diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
gzip -n -1 <"$tmp/layer.tar" >"$tmp/layer.tar.gz"
layer=$(sha256sum "$tmp/layer.tar.gz" | cut -d' ' -f1); layer_size=$(stat -c %s "$tmp/layer.tar.gz")
mv "$tmp/layer.tar.gz" "$blobs/$layer"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" >"$tmp/config.json"
cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1); cfg_size=$(stat -c %s "$tmp/config.json")
mv "$tmp/config.json" "$blobs/$cfg"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cfg" "$cfg_size" "$layer" "$layer_size" >"$tmp/manifest.json"
man=$(sha256sum "$tmp/manifest.json" | cut -d' ' -f1); man_size=$(stat -c %s "$tmp/manifest.json")
mv "$tmp/manifest.json" "$blobs/$man"
printf '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$man" "$man_size" "$name" "${name##*:}" >"$tmp/oci/index.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/oci" -cf "$out" .
