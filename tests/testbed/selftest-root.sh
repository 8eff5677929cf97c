#!/usr/bin/env bash
# Part of selftest.sh, run inside the outer VM: records what a user of the outer VM's root sees,
# one file per finding in OUT; selftest.sh judges them on the host.
#   selftest-root.sh OUT
# fstypes.txt    the file system types of /proc and /sys, and whether each has its own content
# exec-ls.txt    `ls /` of a process `ctr task exec`'d into a runc container of the busybox image
# probe.txt      a file written at a host path (the overlay takes it; the host must not see it)
# iptables.txt   `iptables -t nat -L` and the alternative it ran
# cni.txt        the bridge (ipMasq) and portmap CNI plugins: ADD, the nat table, DEL
# tc.txt         ingress qdisc + u32, then matchall, mirred redirects on veth pairs: the
#                packets that arrive at the far end of the redirect
set -uo pipefail
out=${1:?usage: selftest-root.sh OUT}
repo=$(cd "$(dirname "$0")/../.." && pwd)
w=$(mktemp -d)
bb=$(command -v busybox)

{
  stat -f -c '%n %T' /proc /sys
  [ -r /proc/self/status ] && echo "/proc has /proc/self/status"
  [ -d /sys/class/net ] && echo "/sys has /sys/class/net"
} >"$out/fstypes.txt" 2>&1

probe="$repo/tests/testbed/.overlay-probe.$$"
{ echo written >"$probe" && cat "$probe" && echo "$probe"; } >"$out/probe.txt" 2>&1

{ readlink /etc/alternatives/iptables; iptables -t nat -L -n; } >"$out/iptables.txt" 2>&1

# runc under containerd: an exec'd process must see the container's root.
. "$repo/tests/scripts/containerd-env.sh"
{
  containerd_start "$w/ctrd" &&
    "$repo/tests/scripts/busybox-image.sh" "$w/busybox.tar" &&
    ctr_ images import "$w/busybox.tar" >/dev/null &&
    ctr_ run -d --runtime io.containerd.runc.v2 docker.io/library/husk-busybox:latest tb-exec sleep 600 &&
    echo "--- ls /" &&
    timeout 120 ctr -a "$CTR_ADDR" task exec --exec-id ls1 tb-exec ls /
  echo "--- exit $?"
  ctr_ task kill -s KILL tb-exec
  ctr_ task rm -f tb-exec >/dev/null
  ctr_ containers rm tb-exec
  containerd_stop
} >"$out/exec-ls.txt" 2>&1

# CNI: what containerd's CRI plugin does for a pod (bridge with masquerade, then portmap), in a
# network namespace of its own. Addresses from TEST-NET-2: nothing is sent anywhere.
cni() { # COMMAND PLUGIN CONFIG
  CNI_COMMAND=$1 CNI_CONTAINERID=tb-cni CNI_NETNS=/run/netns/tb-cni CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "/usr/lib/cni/$2" <<<"$3"
}
bridge_conf='{"cniVersion":"0.4.0","name":"tbnet","type":"bridge","bridge":"tbcni0","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"198.51.100.0/24"}]],"dataDir":"'"$w/ipam"'"}}'
{
  ip netns add tb-cni
  res=$(cni ADD bridge "$bridge_conf") && echo "bridge ADD ok" || echo "bridge ADD failed: $res"
  pm_conf=$(jq -c -n --argjson prev "${res:-null}" '{cniVersion:"0.4.0",name:"tbnet",type:"portmap",
    capabilities:{portMappings:true},runtimeConfig:{portMappings:[{hostPort:8080,containerPort:80,protocol:"tcp"}]},prevResult:$prev}')
  r=$(cni ADD portmap "$pm_conf") && echo "portmap ADD ok" || echo "portmap ADD failed: $r"
  echo "--- container address"
  ip netns exec tb-cni ip -4 -o addr show dev eth0
  echo "--- nat after ADD"
  iptables -t nat -S
  r=$(cni DEL portmap "$pm_conf") && echo "portmap DEL ok" || echo "portmap DEL failed: $r"
  r=$(cni DEL bridge "$bridge_conf") && echo "bridge DEL ok" || echo "bridge DEL failed: $r"
  echo "--- nat after DEL"
  iptables -t nat -S
  ip netns del tb-cni
  ip link del tbcni0
} >"$out/cni.txt" 2>&1

# tc: ARP requests sent from tba reach tbb, whose ingress redirects them out of tbc: tbd receives
# them.
# In a network namespace of its own, IPv6 off (its own packets would reach d as well).
unshare -n bash -c '
  sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
  ip link add tba type veth peer name tbb && ip link add tbc type veth peer name tbd || exit 1
  for i in tba tbb tbc tbd; do ip link set "$i" up; done
  ip addr add 192.0.2.1/24 dev tba
  rx() { awk '"'"'$1 == "tbd:" { print $3 }'"'"' /proc/net/dev; }   # /sys shows the root netns
  tc qdisc add dev tbb ingress && echo "qdisc ingress ok"
  for f in "u32 match u32 0 0" "matchall"; do
    tc filter add dev tbb parent ffff: protocol all $f action mirred egress redirect dev tbc && echo "filter ${f%% *} ok"
    before=$(rx)
    "$1" ping -c 2 -W 1 192.0.2.2 >/dev/null 2>&1
    echo "${f%% *}: tbd received $(( $(rx) - before )) packets"
    tc filter del dev tbb parent ffff:
  done
' tc-test "$bb" >"$out/tc.txt" 2>&1
rm -rf "$w"
