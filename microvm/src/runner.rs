//! Running a built VM: event-loop thread, API thread, vCPU threads; waits for the exit.

use std::sync::Arc;

use crate::api::{ApiServer, VmInfo};
use crate::bus::Bus;
use crate::exit::{ExitReason, VmExit};
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::Vcpus;
use crate::vmm::Vm;

/// Runs `vm` until it stops; returns why. `use_seccomp` installs the per-thread filters.
pub fn run(mut vm: Vm, use_seccomp: bool) -> Result<ExitReason, crate::Error> {
    let exit = vm.exit.clone();
    let filters = if use_seccomp { Some(seccomp::filters()?) } else { None };

    if let Some(mut em) = vm.devices.take_event_manager() {
        let ex = exit.clone();
        let f = filters.as_ref().map(|f| f.get(ThreadKind::EventLoop));
        std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                if let Some(f) = f {
                    if let Err(e) = seccompiler::apply_filter(&f) {
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

    let io_bus: Arc<Bus> = Arc::new(std::mem::take(&mut vm.devices.io_bus));
    let mmio_bus: Arc<Bus> = Arc::new(std::mem::take(&mut vm.devices.mmio_bus));
    let info = VmInfo::new(&vm);
    if log::log_enabled!(log::Level::Debug) {
        log::debug!("starting vCPUs {:?} after process start, VMM RSS {} KiB", crate::since_start(), rss_kib().unwrap_or(0));
    }
    let vcpus = Vcpus::start(std::mem::take(&mut vm.vcpus), io_bus, mmio_bus, exit.clone(), filters.as_ref().map(|f| f.get(ThreadKind::Vcpu)))?;
    let vcpus = Arc::new(vcpus);

    let _api = match &vm.config.api_sock {
        Some(path) => Some(ApiServer::start(path, info, vcpus.clone(), exit.clone(), vm.devices.counter_sources(), filters.as_ref().map(|f| f.get(ThreadKind::Api)))?),
        None => None,
    };
    if let Some(f) = filters.as_ref().map(|f| f.get(ThreadKind::Main)) {
        seccompiler::apply_filter(&f).map_err(crate::Error::MainSeccomp)?;
    }
    let reason = exit.wait();
    Ok(reason)
}

/// Resident set size of this process in KiB (from /proc/self/statm).
pub fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()? / 1024)
}

/// Keeps `VmExit` reachable for callers that only hold the runner's result.
pub type SharedExit = Arc<VmExit>;
