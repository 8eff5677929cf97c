#!/usr/bin/env bash
# Builds the pod sandbox image of the CRI tests: an OCI image layout tar (no registry) holding
# only the static pause binary as /pause, Entrypoint ["/pause"], for `ctr images import`.
#   pause-image.sh PAUSE_BINARY OUT.tar NAME
set -euo pipefail
pause=${1:?usage: pause-image.sh PAUSE_BINARY OUT.tar NAME} out=${2:?OUT.tar} name=${3:?NAME}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rootfs" "$tmp/oci/blobs/sha256"
install -m 755 "$pause" "$tmp/rootfs/pause"
# A blob by its digest; prints "DIGEST SIZE".
# (The move comes before the output: the caller reads it through a process substitution.)
blob() { local d s; d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1"); mv "$1" "$tmp/oci/blobs/sha256/$d"; echo "$d $s"; }
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/rootfs" -cf "$tmp/layer" .
read -r layer layer_size < <(blob "$tmp/layer")
# An uncompressed layer: its digest is its diff_id.
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer" >"$tmp/config"
read -r cfg cfg_size < <(blob "$tmp/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cfg" "$cfg_size" "$layer" "$layer_size" >"$tmp/manifest"
read -r man man_size < <(blob "$tmp/manifest")
printf '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$man" "$man_size" "$name" "${name##*:}" >"$tmp/oci/index.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/oci" -cf "$out" .
