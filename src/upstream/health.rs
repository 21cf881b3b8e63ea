//! Passive health: consecutive connect failures mark a backend down for a cool-down, after
//! which one request may probe it again. (Active probes run beside this in the fleet work.)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Failures in a row that take a backend out of rotation.
pub const FAILURES_TO_MARK_DOWN: u32 = 3;
/// How long a backend marked down is skipped before it may be tried again.
pub const COOL_DOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct PassiveHealth {
    consecutive_failures: AtomicU32,
    /// Unix milliseconds until which the backend is skipped (0: not down).
    down_until_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl PassiveHealth {
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Returns true when this failure took the backend down.
    pub fn record_failure(&self) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILURES_TO_MARK_DOWN {
            let until = now_ms() + COOL_DOWN.as_millis() as u64;
            let prev = self.down_until_ms.swap(until, Ordering::Relaxed);
            return prev <= now_ms();
        }
        false
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_down_after_threshold_and_recovers_on_success() {
        let h = PassiveHealth::default();
        assert!(h.is_up());
        assert!(!h.record_failure());
        assert!(!h.record_failure());
        assert!(h.record_failure());
        assert!(!h.is_up());
        h.record_success();
        assert!(h.is_up());
    }
}
