//! The guest's wall clock. A guest restored from a snapshot keeps counting from the moment of
//! the snapshot (kvmclock is restored without a jump of CLOCK_MONOTONIC), so its
//! CLOCK_REALTIME lags by the snapshot's age until the host's time is set here.
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};

use crate::error::{AgentError, Result};

/// Sets CLOCK_REALTIME to `since_epoch` (checked by [`crate::server::checks::restore_realtime`])
/// and logs how far the clock stepped. CLOCK_MONOTONIC and CLOCK_BOOTTIME do not move.
pub fn set_realtime(since_epoch: Duration) -> Result<()> {
    let before = clock_gettime(ClockId::CLOCK_REALTIME).ok().filter(|t| t.tv_sec() >= 0).map(Duration::from);
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from(since_epoch))
        .map_err(|e| AgentError::sys(format!("setting CLOCK_REALTIME to {} ns since the epoch", since_epoch.as_nanos()), e))?;
    match before {
        Some(b) if b <= since_epoch => log::info!("wall clock stepped forward by {:.3} s", (since_epoch - b).as_secs_f64()),
        Some(b) => log::info!("wall clock stepped back by {:.3} s", (b - since_epoch).as_secs_f64()),
        None => log::info!("wall clock set"),
    }
    Ok(())
}
