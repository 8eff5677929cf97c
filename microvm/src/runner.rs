//! Running a built VM: event-loop thread, API thread, vCPU threads; waits for the exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{ApiDevices, ApiServer, VmInfo};
use crate::bus::Bus;
use crate::exit::{Event, ExitReason, VmExit, HALT_CHECK_WINDOW};
use crate::guest_warn;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::Vcpus;
use crate::vmm::Vm;

/// Runs `vm` until it stops; returns why. `use_seccomp` installs the per-thread filters.
pub fn run(mut vm: Vm, use_seccomp: bool) -> Result<ExitReason, crate::Error> {
    let exit = vm.exit.clone();
    let filters = if use_seccomp { Some(seccomp::filters()?) } else { None };
    if use_seccomp {
        seccomp::install_violation_report().map_err(crate::Error::SigsysHandler)?;
    }

    if let Some(mut em) = vm.devices.take_event_manager() {
        let ex = exit.clone();
        let f = filters.as_ref().map(|f| f.get(ThreadKind::EventLoop));
        crate::thread_builder("vmm-events")
            .spawn(move || {
                if let Some(f) = f {
                    if let Err(e) = seccomp::apply(&f, ThreadKind::EventLoop) {
                        ex.request(ExitReason::Error(format!("vmm-events: cannot install seccomp filter: {e}")));
                        return;
                    }
                }
                loop {
                    if let Err(e) = em.run() {
                        ex.request(ExitReason::Error(format!("device event loop failed: {e}")));
                        return;
                    }
                }
            })
            .map_err(crate::Error::Thread)?;
    }

    if let Some(f) = filters.as_ref().map(|f| f.get(ThreadKind::BlockIo)) {
        for t in vm.devices.io_threads() {
            t.install_filter(f.clone()).map_err(crate::Error::IoThread)?;
        }
    }
    if let Some(f) = filters.as_ref().map(|f| f.get(ThreadKind::VsockConnect)) {
        for c in vm.devices.vsock_connectors() {
            c.install_filter(f.clone()).map_err(crate::Error::VsockConnector)?;
        }
    }

    let io_bus: Arc<Bus> = Arc::new(std::mem::take(&mut vm.devices.io_bus));
    let mmio_bus: Arc<Bus> = Arc::new(std::mem::take(&mut vm.devices.mmio_bus));
    let info = VmInfo::new(&vm);
    if log::log_enabled!(log::Level::Debug) {
        use vm_memory::GuestMemoryBackend;
        let ram: Vec<u64> = vm.mem.iter().map(|r| r.as_ptr() as u64).collect();
        let (total, guest) = rss_kib(&ram).unwrap_or((0, 0));
        log::debug!(
            "starting vCPUs {:?} after process start; RSS {total} KiB = guest RAM {guest} KiB + VMM {} KiB",
            crate::since_start(),
            total.saturating_sub(guest)
        );
    }
    let vcpus =
        Vcpus::start(std::mem::take(&mut vm.vcpus), io_bus, mmio_bus, exit.clone(), filters.as_ref().map(|f| f.get(ThreadKind::Vcpu)), vm.msr_list.clone())?;
    let vcpus = Arc::new(vcpus);

    let _api = match &vm.config.api_sock {
        Some(path) => {
            let devices = ApiDevices { counters: vm.devices.counter_sources(), disks: vm.devices.disks(), transports: vm.devices.transports() };
            Some(ApiServer::start(path, info, vcpus.clone(), exit.clone(), devices, filters.as_ref().map(|f| f.get(ThreadKind::Api)))?)
        }
        None => None,
    };
    if let Some(f) = filters.as_ref().map(|f| f.get(ThreadKind::Main)) {
        seccomp::apply(&f, ThreadKind::Main).map_err(crate::Error::MainSeccomp)?;
    }
    Ok(wait_for_exit(&exit, &vcpus))
}

/// Waits for the VM's exit. A power-off line on the console is checked against the vCPUs:
/// the VM powered off only if they halted the way the kernel halts them.
fn wait_for_exit(exit: &VmExit, vcpus: &Vcpus) -> ExitReason {
    loop {
        match exit.wait_event(None, true) {
            Event::Exit(reason) => return reason,
            Event::Timeout => {}
            Event::HaltClaim => {
                // Lines printed while this check runs are covered by it.
                exit.take_halt_claim();
                if vcpus_halted(exit, vcpus) {
                    exit.request(ExitReason::PoweredOff);
                } else if !exit.is_stopping() {
                    guest_warn!(
                        "the console showed a power-off line but the vCPUs did not halt within {HALT_CHECK_WINDOW:?}: ignored (printed by a guest process?)"
                    );
                }
            }
        }
    }
}

/// Probes the vCPUs for the kernel's halt, with growing pauses in between, until they all
/// halted (true), [`HALT_CHECK_WINDOW`] passed or the VM stops for another reason (false).
fn vcpus_halted(exit: &VmExit, vcpus: &Vcpus) -> bool {
    let deadline = Instant::now() + HALT_CHECK_WINDOW;
    let mut gap = Duration::from_millis(5);
    loop {
        if vcpus.probe_halted(Duration::from_secs(1)) == Some(true) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if let Event::Exit(_) = exit.wait_event(Some(gap.min(deadline - now)), false) {
            return false;
        }
        gap = (gap * 2).min(Duration::from_secs(1));
    }
}

/// Resident set size of this process and of the mappings starting at `guest_ram` (host
/// addresses of guest memory), in KiB, from /proc/self/smaps.
pub fn rss_kib(guest_ram: &[u64]) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut total, mut guest, mut in_guest) = (0u64, 0u64, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kb;
            if in_guest {
                guest += kb;
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, _)) = range.split_once('-') {
                if let Ok(start) = u64::from_str_radix(start, 16) {
                    in_guest = guest_ram.contains(&start);
                }
            }
        }
    }
    Some((total, guest))
}

/// Keeps `VmExit` reachable for callers that only hold the runner's result.
pub type SharedExit = Arc<VmExit>;
