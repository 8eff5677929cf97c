#!/usr/bin/env bash
# bench-where: host
# husk-vmm start-up on the local /dev/kvm (which cannot boot Linux): time from process start
# to the first KVM_RUN, and RSS before the guest runs split into guest RAM and VMM (from
# husk-vmm's debug log). See bench.sh for the boot-to-/init comparison against QEMU.
exec "$(dirname "$0")/bench.sh" --native
