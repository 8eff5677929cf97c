#!/bin/busybox sh
# /init of the testbed's outer VM (L1): load the modules that give real KVM, mount the host's
# root read-only over 9p, give it writable tmpfs places, then run the command in a chroot.
# The control share (/ctl) carries the command in and the exit status out.
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin /host /ctl
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -onlcr -F /dev/console 2>/dev/null
say() { echo "testbed: $*" >/dev/console; }
fail() { say "$*"; echo 125 >/ctl/rc 2>/dev/null; sync; poweroff -f; }

for m in $(cat /modules.order); do
  insmod "/modules/$m" 2>/tmp/insmod.err || say "insmod $m: $(cat /tmp/insmod.err)"
done
o9p="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$o9p,rw,cache=none" ctl /ctl || fail "cannot mount the control share"
mount -t 9p -o "$o9p,ro,cache=loose" hostroot /host || fail "cannot mount the host root"
[ -c /dev/kvm ] || fail "no /dev/kvm in the outer VM (kvm_amd did not load: is svm exposed?)"

. /ctl/env.sh   # TB_CTL, TB_OUT, TB_OUT_SHARE, TB_MEM_TMP
h=/host
mount -t devtmpfs dev $h/dev
mkdir -p $h/dev/pts $h/dev/shm
ln -sf /proc/self/fd $h/dev/fd
ln -sf /proc/self/fd/0 $h/dev/stdin
ln -sf /proc/self/fd/1 $h/dev/stdout
ln -sf /proc/self/fd/2 $h/dev/stderr
mount -t devpts -o newinstance,ptmxmode=0666 devpts $h/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $h/dev/shm
mount -t proc proc $h/proc
mount -t sysfs sys $h/sys
mount -t cgroup2 cgroup2 $h/sys/fs/cgroup
for d in /tmp /run /var/tmp /var/lib /var/log /var/cache /mnt /root/.cache; do
  [ -d "$h$d" ] && mount -t tmpfs -o mode=0755,size=${TB_MEM_TMP} tmpfs "$h$d"
done
chmod 1777 $h/tmp $h/var/tmp
mkdir -p "$h$TB_CTL" && mount --bind /ctl "$h$TB_CTL" || fail "cannot mount the control share in the chroot"
if [ "$TB_OUT_SHARE" = 1 ]; then
  mkdir -p /out "$h$TB_OUT" && mount -t 9p -o "$o9p,rw,cache=none" out /out && mount --bind /out "$h$TB_OUT" \
    || fail "cannot mount the results share"
fi
ip link set lo up
hostname husk-testbed
say "ready after $(cut -d' ' -f1 /proc/uptime) s of outer-VM uptime"
# Heartbeat: the host side (run) takes a stale one as a stalled outer VM. The selftest
# stands in for a stall that no kick can end by creating /ctl/no-heartbeat.
(while :; do [ -e /ctl/no-heartbeat ] || cut -d' ' -f1 /proc/uptime >/ctl/heartbeat; sleep 10; done) </dev/null >/dev/null 2>&1 &
chroot $h /bin/bash "$TB_CTL/cmd.sh" </dev/null >/dev/console 2>&1
echo $? >/ctl/rc
sync
poweroff -f
