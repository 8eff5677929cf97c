# Sourced by the network tests: the e2e harness (tests/e2e/lib.sh) plus a CNI network of this
# run. ctr reads CNI's configuration from /etc/cni/net.d and the plugins from /opt/cni/bin;
# net_setup gives the test a private mount namespace in which /etc is an overlay and /opt a
# tmpfs, so the host's stay untouched. The plugins are Debian's (/usr/lib/cni).
#
#   net_setup            call first (re-executes the test in its private mount namespace)
#   NET_NAME NET_BRIDGE NET_GW NET_PREFIX NET_IPAM   the network (bridge, gateway, x.y.z, IPAM dir)
#   net_conflist NAME BRIDGE PREFIX IPAM_DIR         prints a bridge + host-local + portmap conflist
#   net_ip CTR           the container's eth0 IPv4 address (from inside it)
#   net_wait_running CTR the task is RUNNING (ctr run in the background)
#   net_snapshot / net_leak_check   host network state before / nothing of it left after
set -euo pipefail
NET_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$NET_LIB_DIR/../e2e/lib.sh"

net_conflist() { # NAME BRIDGE PREFIX IPAM_DIR
  cat <<JSON
{"cniVersion": "1.0.0", "name": "$1", "plugins": [
  {"type": "bridge", "bridge": "$2", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$4", "ranges": [[{"subnet": "$3.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
}

net_setup() {
  if [ "${HUSK_NET_PRIVATE:-}" != 1 ]; then
    HUSK_NET_PRIVATE=1 exec unshare --mount --propagation private "$0" "$@"
  fi
  local priv
  priv=$(mktemp -d "${TMPDIR:-/tmp}/husk-net-etc.XXXXXX")
  mkdir -p "$priv/up" "$priv/work"
  mount -t overlay -o "lowerdir=/etc,upperdir=$priv/up,workdir=$priv/work" husk-etc /etc
  mount -t tmpfs -o mode=0755 husk-opt /opt
  mkdir -p /etc/cni/net.d /opt/cni
  ln -s /usr/lib/cni /opt/cni/bin
  e2e_setup
  NET_NAME=husk-net
  NET_BRIDGE=hnet$(($$ % 100000))
  NET_PREFIX=10.77.$(($$ % 250))
  NET_GW=$NET_PREFIX.1
  NET_IPAM=$E2E_WORK/ipam
  net_conflist "$NET_NAME" "$NET_BRIDGE" "$NET_PREFIX" "$NET_IPAM" >/etc/cni/net.d/10-husk-net.conflist
  net_snapshot
}

net_ip() { # CTR
  local out
  out=$(ctr_ task exec --exec-id "ip$RANDOM" "$1" ip -o -4 addr show eth0)
  sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' <<<"$out"
}

net_wait_running() { # CTR [SECONDS [PID]]: PID, the `ctr run` starting it, ends the wait if it exits
  local i
  for i in $(seq "${2:-600}"); do
    [ "$(ctr_ task ls 2>/dev/null | awk -v id="$1" '$1 == id {print $3}')" = RUNNING ] && return 0
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      fail "ctr run of $1 exited before the task ran: $(cat "$E2E_WORK/$1.out" 2>/dev/null)"
    fi
    sleep 1
  done
  fail "task $1 not running after ${2:-600} s: $(cat "$E2E_WORK/$1.out" 2>/dev/null)"
}

# Host network state that a container must not change for good: interfaces, ingress qdiscs,
# iptables rules, husk's holder processes, IPs held by host-local.
net_state() {
  echo "links: $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | tr '\n' ' ')"
  echo "ingress qdiscs: $(tc qdisc show | grep -c ingress || true)"
  echo "iptables: $(iptables-save 2>/dev/null | grep -v '^#' | grep -c . || true)"
  echo "netns holders: $(pgrep -cx husk-netns || true)"
  echo "reserved IPs: $(find "$NET_IPAM" -type f -name '[0-9]*' 2>/dev/null | wc -l)"
}
net_snapshot() { net_state >"$E2E_WORK/net-before"; }
net_leak_check() {
  local now
  now=$(net_state)
  # The bridge itself stays (CNI never deletes it); its ports must be gone.
  local ports
  ports=$(ls "/sys/class/net/$NET_BRIDGE/brif" 2>/dev/null | tr '\n' ' ')
  [ -z "$ports" ] || fail "veths left on $NET_BRIDGE: $ports"
  diff <(grep -v '^links' "$E2E_WORK/net-before") <(grep -v '^links' <<<"$now") >&2 || fail "host network state changed (above)"
  diff <(grep '^links' "$E2E_WORK/net-before" | tr ' ' '\n' | grep -v "^$NET_BRIDGE$") <(grep '^links' <<<"$now" | tr ' ' '\n' | grep -v "^$NET_BRIDGE$") >&2 || fail "interfaces left (above)"
  leak_check
}
