# Shared helpers of the husk-vmm testbed tests (sourced).
# HUSK_VMM: the husk-vmm binary (default: target/release, else target/debug of the repo or of
# $CARGO_TARGET_DIR). HUSK_KERNEL_DIR: where vmlinux and bzImage are (default build/kernel).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
find_vmm() {
  local c
  for c in "${HUSK_VMM:-}" "${CARGO_TARGET_DIR:-$repo/target}/release/husk-vmm" "$repo/target/release/husk-vmm" \
           "${CARGO_TARGET_DIR:-$repo/target}/debug/husk-vmm" "$repo/target/debug/husk-vmm"; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  echo "husk-vmm not built (cargo build --release -p husk-microvm, or set HUSK_VMM)" >&2
  return 1
}
VMM=$(find_vmm) || exit 1
KDIR=${HUSK_KERNEL_DIR:-$repo/build/kernel}
[ -f "$KDIR/vmlinux" ] && [ -f "$KDIR/bzImage" ] || { echo "no kernel in $KDIR (make kernel)" >&2; exit 1; }
CMDLINE="console=ttyS0 reboot=k panic=-1 quiet lpj=4000000 tsc=reliable"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
# mkinit NAME SCRIPT_BODY: an initramfs whose /init runs SCRIPT_BODY (busybox sh).
mkinit() {
  printf '#!/bin/sh\n%s\n' "$2" >"$work/$1.sh"
  chmod 755 "$work/$1.sh"
  "$repo/tests/testbed/mkinitramfs.sh" "$work/$1.cpio.gz" "$work/$1.sh"
}
# boot NAME KERNEL INITRD VCPUS [extra husk-vmm args]: runs the VM, sets $rc, output in
# $work/NAME.out (console) and $work/NAME.err (husk-vmm's stderr).
boot() {
  local name=$1 kernel=$2 initrd=$3 vcpus=$4
  shift 4
  rc=0
  local t0=$SECONDS
  timeout -k 5 300 "$VMM" --kernel "$kernel" --initrd "$initrd" --vcpus "$vcpus" --memory 256M \
    --cmdline "$CMDLINE" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  echo "  ($name: exit $rc after $((SECONDS - t0)) s)"
}
finish() {
  echo "vmm tests: $pass passed, $fail failed"
  ((fail == 0))
}
