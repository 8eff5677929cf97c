//! Rate-limited logging for messages a guest can trigger.
//!
//! A hostile guest can cause an error on every request; one line per call site per
//! second (with a count of what was dropped) keeps the VMM's log usable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One rate limiter per call site: at most one message per second.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last_sec: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter that lets the first message through.
    pub const fn new() -> Self {
        Self { last_sec: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Returns `Some(dropped)` when a message may be logged now (with the number of messages
    /// suppressed since the last one), `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).max(1);
        let last = self.last_sec.load(Ordering::Relaxed);
        if now != last && self.last_sec.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Logs a warning caused by guest behaviour, at most once per second per call site.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::devices::virtio::ratelimit::LogLimiter =
            $crate::devices::virtio::ratelimit::LogLimiter::new();
        if let Some(dropped) = LIMITER.allow() {
            if dropped > 0 {
                log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), dropped);
            } else {
                log::warn!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_message_in_same_second_is_suppressed() {
        let l = LogLimiter::new();
        assert_eq!(l.allow(), Some(0));
        // Within the same second (retry if the clock ticked over between the two calls).
        let mut suppressed = false;
        for _ in 0..3 {
            if l.allow().is_none() {
                suppressed = true;
                break;
            }
        }
        assert!(suppressed);
    }
}
