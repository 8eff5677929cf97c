# husk: a microVM container runtime.
#   make deps       install every Debian package the project and its tests need (idempotent)
#   make build      static release binaries (husk-vmm, husk-rootfs, containerd-shim-husk-v2, husk) in target/release
#   make kernel     guest kernel build/kernel/{vmlinux,bzImage} (cached by config hash)
#   make initramfs  build/initramfs.cpio (uncompressed) with the static husk-agent as /init
#   make test       everything: deps, builds, clippy, rustfmt check, unit tests, testbed self-test, in-guest tests
#   make fuzz       every cargo-fuzz target for FUZZ_SECONDS (10) each
#   make bench      benchmarks against peers (QEMU microvm, runc), in the testbed
#   make install    binaries, kernel, initramfs and /etc/husk/config.toml (PREFIX, SYSCONFDIR, DESTDIR)
#   make demo       run a container in a microVM with a private containerd
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
MUSL := x86_64-unknown-linux-musl
BUILD := build
REL := target/release
AGENT := target/$(MUSL)/agent/husk-agent
TESTBED := tests/testbed/run
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build agent kernel initramfs test unit lint fmt-check testbed-selftest testbed-prep testbed-tests host-tests bench install demo fuzz soak clean

deps:
	@tests/scripts/deps.sh

# Static (glibc static-pie) binaries: each pod start execs the shim three times and husk-vmm
# once, and the dynamic loader cost about 20 ms of each exec in the testbed (tests/bench.sh
# prints the pod start); a jailed husk-vmm then needs no library in its jail. The flag goes
# to the target only (--target), never to build scripts or proc macros; the binaries are
# then copied where everything expects them ($(REL)).
HOST_TARGET := x86_64-unknown-linux-gnu
STATIC_BINS := husk-vmm husk-rootfs husk-rootfs-bench containerd-shim-husk-v2 husk
build:
	RUSTFLAGS="$(RUSTFLAGS) -C target-feature=+crt-static" $(CARGO) build --release --locked --target $(HOST_TARGET) -p husk-microvm -p husk-rootfs -p husk-shim
	@mkdir -p $(REL) && for b in $(STATIC_BINS); do cp -f target/$(HOST_TARGET)/release/$$b $(REL)/$$b.new && mv -f $(REL)/$$b.new $(REL)/$$b || exit 1; done

agent:
	$(CARGO) build --profile agent --locked -p husk-agent --target $(MUSL)

kernel:
	@rootfs-builder/scripts/build-kernel.sh $(BUILD)/kernel

initramfs: agent build
	@mkdir -p $(BUILD)
	$(REL)/husk-rootfs initramfs --uncompressed --agent $(AGENT) -o $(BUILD)/initramfs.cpio

unit:
	$(CARGO) test --locked --workspace

lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# rustfmt.toml holds the project's style (long lines).
fmt-check:
	$(CARGO) fmt --all -- --check

testbed-selftest:
	tests/testbed/selftest.sh

# What in-guest tests need built outside the testbed (cargo cannot write in there).
testbed-prep: kernel build initramfs
	@for b in tests/*/build.sh; do echo "prep: $$b"; $$b || exit 1; done

# Every test that boots a real guest, in two outer VMs at once (tests/testbed/suite-run).
testbed-tests: testbed-prep
	tests/testbed/suite-run --timeout 1800 $(FILTER)

# The 100-cycle soak (50 single containers, 50 pods) with the /proc-based leak check; make test
# runs 15 of each.
soak: testbed-prep
	HUSK_CYCLES=50 HUSK_POD_CYCLES=50 tests/testbed/suite-run --timeout 3600 tests/e2e/test-cycles.sh tests/e2e/test-pod-cycles.sh

# Host-side checks of guest-facing outputs (QEMU TCG, no KVM needed) and of the virtio
# bench's ratio verdicts.
host-tests: kernel
	python3 tests/virtio/test_ratio.py
	tests/rootfs/guest-mount.sh

test: deps kernel build initramfs lint fmt-check unit host-tests fuzz testbed-selftest testbed-tests

bench: testbed-prep
	tests/bench.sh --where host
	$(TESTBED) --timeout 5400 -- tests/bench.sh --where testbed

FUZZ_SECONDS ?= 10
fuzz:
	tests/scripts/fuzz.sh $(FUZZ_SECONDS)

install: build initramfs kernel
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/husk $(DESTDIR)$(SYSCONFDIR)/husk
	install -m 755 $(REL)/husk-vmm $(REL)/husk-rootfs $(REL)/containerd-shim-husk-v2 $(REL)/husk $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/kernel/vmlinux $(DESTDIR)$(PREFIX)/share/husk/vmlinux
	install -m 644 $(BUILD)/initramfs.cpio $(DESTDIR)$(PREFIX)/share/husk/initramfs
	install -m 644 $(BUILD)/kernel/release $(DESTDIR)$(PREFIX)/share/husk/kernel.release
	install -m 644 config/runtimeclass.yaml $(DESTDIR)$(PREFIX)/share/husk/runtimeclass.yaml
	@[ -f $(DESTDIR)$(SYSCONFDIR)/husk/config.toml ] || sed 's#@PREFIX@#$(PREFIX)#g' config/husk.toml.in >$(DESTDIR)$(SYSCONFDIR)/husk/config.toml
	@tests/scripts/print-containerd-snippet.sh $(PREFIX)

demo: deps kernel build initramfs
	tests/demo/run.sh

clean:
	rm -rf $(BUILD) target
