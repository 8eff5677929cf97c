//! The checks of the host's requests that need nothing of the system: every number, length
//! and name a request carries, bounded before the service acts on it. The service and the
//! request fuzz target ([`crate::fuzz_api::requests`]) share them.
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{AgentError, Result};

/// The signal of a SignalProcess request.
pub fn signal(number: u32) -> Result<Signal> {
    i32::try_from(number).ok().and_then(|s| Signal::try_from(s).ok()).ok_or_else(|| AgentError::InvalidArgument(format!("signal {number} is not valid")))
}

/// How many bytes a ReadStdout/ReadStderr may return (0: the default chunk).
pub fn read_limit(max_bytes: u32) -> Result<usize> {
    match max_bytes {
        0 => Ok(husk_protocol::DEFAULT_READ_CHUNK as usize),
        n if n <= husk_protocol::MAX_STDIO_CHUNK => Ok(n as usize),
        n => Err(AgentError::InvalidArgument(format!("max_bytes {n} is larger than {}", husk_protocol::MAX_STDIO_CHUNK))),
    }
}

/// The size of one WriteStdin chunk.
pub fn stdin_chunk(len: usize) -> Result<()> {
    if len > husk_protocol::MAX_STDIO_CHUNK as usize {
        return Err(AgentError::InvalidArgument(format!("stdin chunk of {len} bytes is larger than {}", husk_protocol::MAX_STDIO_CHUNK)));
    }
    Ok(())
}

/// A terminal size of ResizeTty.
pub fn tty_size(width: u32, height: u32) -> Result<(u16, u16)> {
    match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(AgentError::InvalidArgument(format!("terminal size {width}x{height} is too large"))),
    }
}

/// A SetHostname name.
pub fn hostname(h: &str) -> Result<()> {
    if h.is_empty() || h.len() > 64 || h.contains('\0') {
        return Err(AgentError::InvalidArgument(format!("hostname {h:?} is not valid")));
    }
    Ok(())
}

/// The host's wall-clock time of a SyncAfterRestore request, as the time since the epoch:
/// within [`husk_protocol::MIN_RESTORE_REALTIME_NS`]..[`husk_protocol::MAX_RESTORE_REALTIME_NS`].
pub fn restore_realtime(ns: i64) -> Result<Duration> {
    let (min, max) = (husk_protocol::MIN_RESTORE_REALTIME_NS, husk_protocol::MAX_RESTORE_REALTIME_NS);
    u64::try_from(ns).ok().filter(|_| (min..max).contains(&ns)).map(Duration::from_nanos).ok_or_else(|| {
        AgentError::InvalidArgument(format!("realtime_ns {ns} is not a time between 2020-01-01 and 2200-01-01 ({min}..{max} ns since the epoch)"))
    })
}

/// The length of a SyncAfterRestore request's entropy.
pub fn restore_entropy(len: usize) -> Result<()> {
    let (min, max) = (husk_protocol::MIN_RESTORE_ENTROPY, husk_protocol::MAX_RESTORE_ENTROPY);
    if !(min..=max).contains(&len) {
        return Err(AgentError::InvalidArgument(format!("entropy of {len} bytes: {min}..={max} bytes expected")));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_bounded() {
        assert_eq!(signal(9).unwrap(), Signal::SIGKILL);
        for bad in [0, 65, u32::MAX] {
            assert!(signal(bad).unwrap_err().to_string().contains(&bad.to_string()));
        }
        assert_eq!(read_limit(0).unwrap(), husk_protocol::DEFAULT_READ_CHUNK as usize);
        assert!(read_limit(husk_protocol::MAX_STDIO_CHUNK + 1).is_err());
        assert!(stdin_chunk(husk_protocol::MAX_STDIO_CHUNK as usize + 1).is_err());
        assert_eq!(tty_size(80, 24).unwrap(), (80, 24));
        assert!(tty_size(70_000, 24).is_err());
        assert!(hostname("").is_err() && hostname(&"h".repeat(65)).is_err() && hostname("a\0b").is_err());
        hostname("pod-1").unwrap();
    }

    #[test]
    fn restore_entropy_length_is_bounded() {
        for ok in [husk_protocol::MIN_RESTORE_ENTROPY, 64, husk_protocol::MAX_RESTORE_ENTROPY] {
            restore_entropy(ok).unwrap();
        }
        for bad in [0, 1, husk_protocol::MIN_RESTORE_ENTROPY - 1, husk_protocol::MAX_RESTORE_ENTROPY + 1, usize::MAX] {
            let err = restore_entropy(bad).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{bad}");
            assert!(err.to_string().starts_with(&format!("entropy of {bad} bytes")), "{err}");
        }
    }

    #[test]
    fn restore_realtime_is_a_sane_time() {
        // 2026-12-06T05:57:22.123456789Z.
        let now = 1_796_536_642_123_456_789;
        assert_eq!(restore_realtime(now).unwrap(), Duration::new(1_796_536_642, 123_456_789));
        let min = husk_protocol::MIN_RESTORE_REALTIME_NS;
        assert_eq!(restore_realtime(min).unwrap(), Duration::from_secs(1_577_836_800));
        restore_realtime(husk_protocol::MAX_RESTORE_REALTIME_NS - 1).unwrap();
        for bad in [0, -1, i64::MIN, 1, 1_000_000_000, min - 1, husk_protocol::MAX_RESTORE_REALTIME_NS, i64::MAX] {
            let err = restore_realtime(bad).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{bad}");
            assert!(err.to_string().starts_with(&format!("realtime_ns {bad} ")), "{err}");
        }
    }
}
