#!/usr/bin/env bash
# ctr run --cni with Debian's CNI plugins (bridge + host-local + portmap): the container has
# the address CNI assigned and answers on it from inside the VM (ping and TCP from the host),
# resolves a name through a resolver the test runs on the bridge, and several containers on
# the bridge reach each other. After they end (ctr runs CNI DEL and deletes them), nothing of
# theirs is left: processes, mounts, taps, qdiscs, namespaces, iptables rules, reserved IPs.
# Needs hardware KVM (tests/testbed/run).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
net_setup
T=${HUSK_E2E_TIMEOUT:-600}
NAME=web.husk.test
NAME_IP=10.1.2.3

# A server container, attached in the background as `ctr run` is used (ctr runs CNI between
# Create and Start, and CNI DEL once the task ended): serve NAME [extra ctr flags...]
serve() {
  local id=$1; shift
  timeout "$T" ctr -a "$CTR_ADDR" run --cni --rm --runtime "$RUNTIME" "$@" "$IMAGE" "$id" \
    sh -c "while true; do echo hello-from-$id | nc -l -p 8080; done" >"$E2E_WORK/$id.out" 2>&1 &
  echo $! >"$E2E_WORK/$id.ctr"
}
# Waits until `serve`d CTR runs; fails at once if its `ctr run` ended instead.
serving() { net_wait_running "$1" 600 "$(cat "$E2E_WORK/$1.ctr")"; }

# 1. One container: its address is the one host-local reserved for it.
printf 'nameserver %s\n' "$NET_GW" >"$E2E_WORK/resolv.conf"
serve web --mount "type=bind,src=$E2E_WORK/resolv.conf,dst=/etc/resolv.conf,options=rbind:ro"
serving web
ip=$(net_ip web)
[ -n "$ip" ] || fail "web has no IPv4 address on eth0: $(ctr_ task exec --exec-id a0 web ip addr)"
owner=$(head -n1 "$NET_IPAM/$NET_NAME/$ip" 2>/dev/null | tr -d '\r' || true)
assert_eq "default-web" "$owner" "host-local's reservation of $ip"
log "web has $ip, the address CNI assigned"
mac_in=$(ctr_ task exec --exec-id m0 web cat /sys/class/net/eth0/address)
route=$(ctr_ task exec --exec-id r0 web ip route)
assert_contains "$route" "default via $NET_GW dev eth0" "the default route CNI made"

# 2. From the host: ping and TCP to the pod IP reach the VM.
busybox ping -c 3 -W 10 "$ip" >/dev/null || fail "ping $ip from the host"
out=$(timeout 60 bash -c "exec 3<>/dev/tcp/$ip/8080; cat <&3")
assert_eq "hello-from-web" "$out" "TCP from the host to $ip:8080"
# Neighbour state without a bridge in the pod: the host learned the VM's MAC (the veth's).
neigh=$(ip neigh show "$ip")
assert_contains "$neigh" "$mac_in" "the host's neighbour entry for $ip"
log "ping, TCP and ARP from the host: ok"

# 3. DNS: a resolver on the bridge's address answers the container.
python3 "$NET_LIB_DIR/dns.py" "$NET_GW" "$NAME" "$NAME_IP" 300 100 >"$E2E_WORK/dns.out" 2>&1 &
dns=$!
for _ in $(seq 120); do grep -q listening "$E2E_WORK/dns.out" && break; sleep 0.5; done
grep -q listening "$E2E_WORK/dns.out" || fail "the resolver did not start: $(cat "$E2E_WORK/dns.out")"
out=$(ctr_ task exec --exec-id d0 web nslookup "$NAME" 2>&1 || true)
kill "$dns" 2>/dev/null || true
assert_contains "$out" "$NAME_IP" "nslookup $NAME through /etc/resolv.conf ($NET_GW)"
log "DNS through the host's resolver: ok"

# 4. More containers on the bridge reach each other.
serve p2
serve p3
serving p2
serving p3
ip2=$(net_ip p2)
ip3=$(net_ip p3)
[ -n "$ip2" ] && [ -n "$ip3" ] && [ "$ip2" != "$ip3" ] && [ "$ip2" != "$ip" ] || fail "addresses web=$ip p2=$ip2 p3=$ip3"
for pair in "p2 $ip3 p3" "p3 $ip2 p2" "p2 $ip web" "web $ip3 p3"; do
  set -- $pair
  out=$(ctr_ task exec --exec-id "c$RANDOM" "$1" sh -c "nc -w 10 $2 8080 </dev/null")
  assert_eq "hello-from-$3" "$out" "$1 reaching $3 at $2"
done
log "three containers on one bridge reach each other: ok"

# 5. They end: ctr runs CNI DEL and deletes them; nothing is left.
for id in web p2 p3; do
  ctr_ task kill -s KILL "$id"
done
for id in web p2 p3; do
  wait "$(cat "$E2E_WORK/$id.ctr")" || true
done
sleep 1
net_leak_check
log "PASS"
