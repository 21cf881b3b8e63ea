//! Active health state of one backend, fed by the probes in [`super::probe`]: `unhealthy_after`
//! failed probes in a row take it out of rotation, `healthy_after` good ones bring it back.
//! A backend counts as healthy until its first probes say otherwise (as in Pingora's LB).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Probed path (from the root of the backend, not the provider's base path). Default `/health`.
    pub path: String,
    /// Time between two probes of a backend. Default 5s.
    pub interval: Duration,
    /// A probe not answered 2xx within this counts as failed. Default 2s.
    pub timeout: Duration,
    /// Failed probes in a row that mark a backend down. Default 2.
    pub unhealthy_after: u32,
    /// Good probes in a row that mark a down backend up. Default 2.
    pub healthy_after: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

#[derive(Debug)]
pub struct ActiveHealth {
    up: AtomicBool,
    /// Probe results in a row that disagree with `up`.
    streak: AtomicU32,
    /// Consecutive failed probes (for `/health`).
    failures: AtomicU32,
    /// Clock value (see [`crate::clock`]) at which the next probe is due; 0 = now.
    next_probe: AtomicU64,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            next_probe: AtomicU64::new(0),
        }
    }
}

impl ActiveHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Claims the next probe if it is due (one prober wins even with several runners).
    pub fn claim_probe(&self, now: u64, interval: Duration) -> bool {
        let due = self.next_probe.load(Ordering::Relaxed);
        due <= now
            && self
                .next_probe
                .compare_exchange(due, now + interval.as_millis() as u64, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records one probe; returns `Some(up)` when this result changed the state.
    pub fn record(&self, ok: bool, s: &HealthSettings) -> Option<bool> {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let up = self.is_up();
        if ok == up {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if up { s.unhealthy_after } else { s.healthy_after };
        if n >= needed {
            self.streak.store(0, Ordering::Relaxed);
            self.up.store(ok, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_in_both_directions() {
        let s = HealthSettings { unhealthy_after: 2, healthy_after: 3, ..Default::default() };
        let h = ActiveHealth::default();
        assert!(h.is_up());
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(true, &s), None); // the streak is broken
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(false, &s), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.record(true, &s), None);
        assert_eq!(h.record(true, &s), None);
        assert_eq!(h.record(true, &s), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn one_claim_per_interval() {
        let h = ActiveHealth::default();
        assert!(h.claim_probe(10, Duration::from_millis(100)));
        assert!(!h.claim_probe(50, Duration::from_millis(100)));
        assert!(h.claim_probe(110, Duration::from_millis(100)));
    }
}
