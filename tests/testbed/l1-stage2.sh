#!/bin/sh
# /init of the testbed's outer VM (L1), stage 2: PID 1 in the new root that l1-init.sh built
# (/dev, /proc and /sys already moved in; run with the busybox beside this file). Mounts the
# rest of a host's kernel file systems, selects iptables-legacy, starts the heartbeat, runs
# the command, writes its exit status back and powers off.
#   stage2.sh TB_CTL
bb="${0%/*}/busybox"
ctl=$1
say() { echo "testbed: $*" >/dev/console; }
fail() { say "$*"; echo 125 >"$ctl/rc" 2>/dev/null; $bb sync; $bb poweroff -f; }
. "$ctl/env.sh" || fail "cannot read $ctl/env.sh"

$bb mkdir -p /dev/pts /dev/shm
$bb ln -sfn /proc/self/fd /dev/fd
$bb ln -sfn /proc/self/fd/0 /dev/stdin
$bb ln -sfn /proc/self/fd/1 /dev/stdout
$bb ln -sfn /proc/self/fd/2 /dev/stderr
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts || fail "cannot mount devpts"
$bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "cannot mount /dev/shm"
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"

# The kernel has the legacy x_tables modules, not nf_tables: point the alternatives at the
# legacy binaries. /etc is the overlay's, so the host's choice is untouched.
for t in iptables ip6tables; do
  for s in "" -save -restore; do
    [ -L "/etc/alternatives/$t$s" ] && [ -x "/usr/sbin/$t-legacy$s" ] && $bb ln -sfn "/usr/sbin/$t-legacy$s" "/etc/alternatives/$t$s"
  done
done
$bb ip link set lo up
# Shared memory (husk-vmm's memfd guest RAM) may use transparent huge pages when asked:
# README's recommended host setting (Debian's default, never, boots guests slower).
echo advise >/sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null || true
$bb hostname husk-testbed
say "ready after $($bb cut -d' ' -f1 /proc/uptime) s of outer-VM uptime"
# Heartbeat, every 2 s: the host side (run) kicks the outer VM when one is a few beats late
# and takes a stale one as a stalled outer VM. The selftest stands in for a stall that no kick
# can end by creating $TB_CTL/no-heartbeat.
(while :; do [ -e "$ctl/no-heartbeat" ] || $bb cut -d' ' -f1 /proc/uptime >"$ctl/heartbeat"; $bb sleep 2; done) </dev/null >/dev/null 2>&1 &
/bin/bash "$ctl/cmd.sh" </dev/null >/dev/console 2>&1
echo $? >"$ctl/rc"
$bb sync
$bb poweroff -f
