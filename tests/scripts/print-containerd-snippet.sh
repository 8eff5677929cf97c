#!/usr/bin/env bash
# Prints the containerd configuration that registers husk (for ctr and for CRI).
prefix=${1:-/usr/local}
cat <<SNIP

husk is installed. Register it with containerd (/etc/containerd/config.toml, version 2), then
restart containerd; containerd finds containerd-shim-husk-v2 on its PATH ($prefix/bin):

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
    runtime_type = "io.containerd.husk.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk.options]
      ConfigPath = "/etc/husk/config.toml"

Kubernetes: kubectl apply -f $prefix/share/husk/runtimeclass.yaml (handler "husk", with the pod overhead). ctr: ctr run --runtime io.containerd.husk.v2 IMAGE ID CMD
Check this host: husk check
SNIP
