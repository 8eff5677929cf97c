#!/bin/busybox sh
# /init of the testbed's outer VM (L1), stage 1: load the modules (KVM, 9p, overlay, netfilter,
# tc), build the new root and switch into it; l1-stage2.sh runs the command there.
# The new root is an overlay: the host's / over 9p (read-only) as its lower layer, a tmpfs as
# its upper one, so the host's files are at their paths, writes anywhere land in RAM and never
# reach the host, and runc sees a real root (from the initramfs it can only chroot, and then
# `runc exec` joins the initramfs instead of the container's root). On top of it, tmpfs on
# /tmp, /run, /var/{tmp,lib,log,cache}, /mnt, /root/.cache (each at most TB_MEM_TMP), and the
# control and results shares at their host paths.
# The control share carries the command in (cmd.sh, env.sh) and the exit status out (rc).
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin /ctl /lower /up /new
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -onlcr -F /dev/console 2>/dev/null
ctl=/ctl
say() { echo "testbed: $*" >/dev/console; }
fail() { say "$*"; echo 125 >$ctl/rc 2>/dev/null; sync; poweroff -f; }

for m in $(cat /modules.order); do
  insmod "/modules/$m" 2>/tmp/insmod.err || say "insmod $m: $(cat /tmp/insmod.err)"
done
o9p="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$o9p,rw,cache=none" ctl /ctl || fail "cannot mount the control share"
[ -c /dev/kvm ] || fail "no /dev/kvm in the outer VM (kvm_amd did not load: is svm exposed?)"
. /ctl/env.sh   # TB_CTL, TB_OUT, TB_OUT_SHARE, TB_MEM_TMP

# The host's / must be exported with multidevs=remap (run does): without it the mount points
# of different host file systems (/proc, /sys) share inode numbers and overlayfs merges them.
mount -t 9p -o "$o9p,ro,cache=loose" hostroot /lower || fail "cannot mount the host root"
mount -t tmpfs -o mode=0755,size=${TB_MEM_TMP} tmpfs /up && mkdir /up/u /up/w &&
  mount -t overlay -o lowerdir=/lower,upperdir=/up/u,workdir=/up/w overlay /new ||
  fail "cannot mount the overlay of the host root"
n=/new
for d in /tmp /run /var/tmp /var/lib /var/log /var/cache /mnt /root/.cache; do
  mkdir -p "$n$d" && mount -t tmpfs -o mode=0755,size=${TB_MEM_TMP} tmpfs "$n$d" || fail "cannot mount a tmpfs on $d"
done
chmod 1777 $n/tmp $n/var/tmp
mkdir -p "$n$TB_CTL" && mount --move /ctl "$n$TB_CTL" || fail "cannot move the control share to $TB_CTL"
ctl="$n$TB_CTL"
if [ "$TB_OUT_SHARE" = 1 ]; then
  mkdir -p "$n$TB_OUT" && mount -t 9p -o "$o9p,rw,cache=none" out "$n$TB_OUT" || fail "cannot mount the results share"
fi
# Stage 2 and the busybox it runs with go where switch_root (which empties the initramfs)
# leaves them: the new root's /run.
s2=/run/husk-testbed
mkdir -p "$n$s2" && cp /bin/busybox /stage2.sh "$n$s2/" || fail "cannot copy stage 2 to $s2"
for d in /dev /proc /sys; do mount --move "$d" "$n$d" || fail "cannot move $d into the new root"; done
exec switch_root "$n" "$s2/busybox" sh "$s2/stage2.sh" "$TB_CTL"
