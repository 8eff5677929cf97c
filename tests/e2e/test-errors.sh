#!/usr/bin/env bash
# Error paths through the real containerd + ctr: every failure reaches ctr with its cause, and
# nothing is left behind (no VMM, shim, state directory, socket, mount). Runs on any host (no
# guest has to boot): fake VMMs and broken boot files stand in for the failures.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_setup

run_fail() { # ID WANT-SUBSTRING [ctr run args...]: the run must fail naming WANT
  local id=$1 want=$2 out rc=0
  shift 2
  out=$(timeout 300 ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$@" 2>&1) || rc=$?
  [ "$rc" != 0 ] || fail "$id: ctr run succeeded: $out"
  [ "$rc" != 124 ] || fail "$id: ctr run hung"
  assert_contains "$out" "$want" "$id: error"
  log "$id: failed as expected: $out"
  ctr -a "$CTR_ADDR" containers rm "$id" >/dev/null 2>&1 || true
  leak_check
}

# 1. Missing kernel: named with the config field.
write_husk_config /nonexistent/vmlinux
run_fail e-kernel '"/nonexistent/vmlinux" not found (set vm.kernel' "$IMAGE" e-kernel true

# 2. A kernel file the VMM rejects: the VMM's own one-line reason reaches ctr.
head -c 4096 /dev/urandom >"$E2E_WORK/garbage-kernel"
write_husk_config "$E2E_WORK/garbage-kernel"
run_fail e-badkernel 'husk-vmm exited during boot with exit status: 2' "$IMAGE" e-badkernel true

# 3. A VMM that never lets the agent answer: boot timeout, the VMM is killed.
cat >"$E2E_WORK/fake-vmm" <<'SH'
#!/bin/sh
exec sleep 1000
SH
chmod +x "$E2E_WORK/fake-vmm"
write_husk_config
sed -i "s|^vmm = .*|vmm = \"$E2E_WORK/fake-vmm\"|; s|^boot_timeout_secs = .*|boot_timeout_secs = 3|" "$E2E_WORK/husk.toml"
touch "$E2E_WORK/dummy-initramfs"
sed -i "s|^initramfs = .*|initramfs = \"$E2E_WORK/dummy-initramfs\"|" "$E2E_WORK/husk.toml"
# A script cannot run in the jail (it takes ELF programs and their libraries; test-jail.sh
# covers it): this VMM runs unconfined.
printf '\n[jail]\nenabled = false\n' >>"$E2E_WORK/husk.toml"
[ -f "$HUSK_KERNEL" ] || sed -i "s|^kernel = .*|kernel = \"$E2E_WORK/garbage-kernel\"|" "$E2E_WORK/husk.toml"
run_fail e-timeout 'did not answer on vsock port 1024 within 3 s' "$IMAGE" e-timeout true

# 4. The shim is SIGKILLed while the VM boots: containerd runs `shim delete`, which kills the VMM
#    and removes the state.
sed -i "s|^boot_timeout_secs = .*|boot_timeout_secs = 600|" "$E2E_WORK/husk.toml"
timeout 300 ctr -a "$CTR_ADDR" run --rm --runtime "$RUNTIME" "$IMAGE" e-shimdies true >"$E2E_WORK/shimdies.out" 2>&1 &
ctr_pid=$!
for _ in $(seq 1 300); do
  ls "$E2E_WORK"/run-husk/default/e-shimdies/state.json >/dev/null 2>&1 && grep -q '"vmm_pid": [1-9]' "$E2E_WORK"/run-husk/default/e-shimdies/state.json && break
  sleep 0.1
done
vmm_pid=$(sed -n 's/.*"vmm_pid": *\([0-9]*\).*/\1/p' "$E2E_WORK/run-husk/default/e-shimdies/state.json")
shim_pid=$(cat "$E2E_WORK"/ctrd/state/io.containerd.runtime.v2.task/default/e-shimdies/shim.pid)
log "killing shim $shim_pid (VMM $vmm_pid)"
kill -KILL "$shim_pid"
rc=0; wait "$ctr_pid" || rc=$?
[ "$rc" != 0 ] || fail "ctr run survived its shim"
for _ in $(seq 1 100); do [ -d "/proc/$vmm_pid" ] || break; grep -q ') Z ' "/proc/$vmm_pid/stat" 2>/dev/null && break; sleep 0.1; done
[ -d "/proc/$vmm_pid" ] && ! grep -q ') Z ' "/proc/$vmm_pid/stat" && fail "VMM $vmm_pid survived its shim"
ctr -a "$CTR_ADDR" containers rm e-shimdies >/dev/null 2>&1 || true
leak_check
log "e-shimdies: VMM gone, state removed"

# 5. No rootfs: `ctr run --rootfs` of a directory that does not exist.
run_fail e-rootfs 'no rootfs' --rootfs /nonexistent-rootfs e-rootfs true

# 5b. An OCI field husk cannot honour: refused by name, before a VM boots, unless
# [shim] ignore_unsupported lists it (the default lists process.apparmorProfile only).
write_husk_config
echo 'ignore_unsupported = []' >>"$E2E_WORK/husk.toml"
run_fail e-apparmor 'process.apparmorProfile' --apparmor-profile husk-test-profile "$IMAGE" e-apparmor true
write_husk_config

# 6. KVM unavailable: /dev/kvm replaced by a read-only file in containerd's mount namespace.
containerd_stop_only() { kill "$CTRD_PID"; wait "$CTRD_PID" 2>/dev/null || true; CTRD_PID=""; }
if command -v unshare >/dev/null; then
  containerd_stop_only
  write_husk_config
  touch "$E2E_WORK/not-kvm"
  unshare -m --propagation private sh -c "mount --bind '$E2E_WORK/not-kvm' /dev/kvm && mount -o remount,bind,ro /dev/kvm && exec env PATH='$HUSK_BIN_DIR:$PATH' containerd --config '$E2E_WORK/ctrd/config.toml'" >>"$E2E_WORK/ctrd/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 1 100); do ctr -a "$CTR_ADDR" version >/dev/null 2>&1 && break; sleep 0.2; done
  run_fail e-kvm 'KVM is unavailable: cannot open "/dev/kvm"' "$IMAGE" e-kvm true
fi
log "all error paths passed"
