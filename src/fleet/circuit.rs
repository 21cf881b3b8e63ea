//! Per-backend circuit breaker fed by passive signals (connect failures, timeouts, 5xx):
//! closed → open after `failures` within `window` → after `cooldown` one request is let
//! through as a half-open probe → closed on its success, open again on its failure.
//!
//! "One" is exact under concurrency: [`Circuit::acquire`] decides and takes the trial under
//! one lock, so of many requests racing for a backend whose cool-down just ended, exactly one
//! is sent; the others are refused and go elsewhere. [`Circuit::allows`] is only a cheap
//! pre-filter for selection and reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSettings {
    /// Failures within `window` that open the circuit. Default 5.
    pub failures: u32,
    /// Length of the failure-counting window. Default 10s.
    pub window: Duration,
    /// How long an open circuit refuses traffic before a half-open probe. Default 5s.
    pub cooldown: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings { failures: 5, window: Duration::from_secs(10), cooldown: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// What [`Circuit::acquire`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed.
    Admitted,
    /// This request is the one half-open trial; `half_opened`: the circuit just left "open".
    Trial { half_opened: bool },
    /// Open, or half-open with its trial still out.
    Refused,
}

impl Admission {
    pub fn admitted(self) -> bool {
        self != Admission::Refused
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    window_start: u64,
    failures: u32,
    /// When the circuit opened, or when the half-open probe was let through.
    since: u64,
}

#[derive(Debug)]
pub struct Circuit {
    /// Fast path: false while closed with no failure counted, so successes cost one load.
    dirty: AtomicBool,
    inner: Mutex<Inner>,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            dirty: AtomicBool::new(false),
            inner: Mutex::new(Inner { state: CircuitState::Closed, window_start: 0, failures: 0, since: 0 }),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every update is a plain store.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state as reported (an open circuit past its cool-down still reads "open").
    pub fn state(&self) -> CircuitState {
        if !self.dirty.load(Ordering::Relaxed) {
            return CircuitState::Closed;
        }
        self.lock().state
    }

    /// Whether a request may be sent now: closed; open past the cool-down (it becomes the
    /// probe); half-open whose probe has not reported within a cool-down (a lost probe).
    pub fn allows(&self, s: &CircuitSettings, now: u64) -> bool {
        self.allows_at(s, || now)
    }

    /// [`Circuit::allows`] reading the clock only when the circuit is not plainly closed.
    #[inline]
    pub fn allows_at(&self, s: &CircuitSettings, now: impl FnOnce() -> u64) -> bool {
        !self.dirty.load(Ordering::Relaxed) || self.allows_dirty(s, now)
    }

    #[inline(never)]
    fn allows_dirty(&self, s: &CircuitSettings, now: impl FnOnce() -> u64) -> bool {
        let g = self.lock();
        match g.state {
            CircuitState::Closed => true,
            CircuitState::Open | CircuitState::HalfOpen => now() >= g.since + ms(s.cooldown),
        }
    }

    /// Takes the right to send one request to this backend now. Closed: admitted. Open past
    /// its cool-down: this request becomes the half-open trial (the state turns half-open in the
    /// same step). Half-open whose trial has not reported within a cool-down (a lost trial):
    /// this request is the new trial. Otherwise refused.
    pub fn acquire(&self, s: &CircuitSettings, now: u64) -> Admission {
        self.acquire_at(s, || now)
    }

    /// [`Circuit::acquire`] reading the clock only when the circuit is not plainly closed.
    #[inline]
    pub fn acquire_at(&self, s: &CircuitSettings, now: impl FnOnce() -> u64) -> Admission {
        if !self.dirty.load(Ordering::Acquire) {
            return Admission::Admitted;
        }
        self.acquire_dirty(s, now)
    }

    #[inline(never)]
    fn acquire_dirty(&self, s: &CircuitSettings, now: impl FnOnce() -> u64) -> Admission {
        let mut g = self.lock();
        if g.state == CircuitState::Closed {
            return Admission::Admitted;
        }
        let now = now();
        match g.state {
            CircuitState::Closed => Admission::Admitted,
            CircuitState::Open if now >= g.since + ms(s.cooldown) => {
                g.state = CircuitState::HalfOpen;
                g.since = now;
                Admission::Trial { half_opened: true }
            }
            CircuitState::HalfOpen if now >= g.since + ms(s.cooldown) => {
                g.since = now;
                Admission::Trial { half_opened: false }
            }
            CircuitState::Open | CircuitState::HalfOpen => Admission::Refused,
        }
    }

    /// A response under 500 arrived. Returns the new state on a transition.
    pub fn record_success(&self) -> Option<CircuitState> {
        if !self.dirty.load(Ordering::Relaxed) {
            return None;
        }
        let mut g = self.lock();
        let prev = g.state;
        g.state = CircuitState::Closed;
        g.failures = 0;
        self.dirty.store(false, Ordering::Relaxed);
        (prev != CircuitState::Closed).then_some(CircuitState::Closed)
    }

    /// A connect failure, timeout or 5xx. Returns the new state on a transition.
    pub fn record_failure(&self, s: &CircuitSettings, now: u64) -> Option<CircuitState> {
        self.dirty.store(true, Ordering::Relaxed);
        let mut g = self.lock();
        match g.state {
            CircuitState::HalfOpen => {
                g.state = CircuitState::Open;
                g.since = now;
                Some(CircuitState::Open)
            }
            // Late failures of requests sent before it opened do not extend the cool-down.
            CircuitState::Open => None,
            CircuitState::Closed => {
                if g.failures == 0 || now >= g.window_start + ms(s.window) {
                    g.window_start = now;
                    g.failures = 0;
                }
                g.failures += 1;
                if g.failures >= s.failures {
                    g.state = CircuitState::Open;
                    g.since = now;
                    g.failures = 0;
                    return Some(CircuitState::Open);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CircuitSettings {
        CircuitSettings { failures: 3, window: Duration::from_millis(1000), cooldown: Duration::from_millis(500) }
    }

    #[test]
    fn opens_after_failures_in_window_and_recovers_through_half_open() {
        let (c, s) = (Circuit::default(), settings());
        assert_eq!(c.record_failure(&s, 10), None);
        assert_eq!(c.record_failure(&s, 20), None);
        assert!(c.allows(&s, 20));
        assert_eq!(c.record_failure(&s, 30), Some(CircuitState::Open));
        assert!(!c.allows(&s, 100));
        assert_eq!(c.state(), CircuitState::Open);
        assert!(c.allows(&s, 530));
        assert_eq!(c.acquire(&s, 530), Admission::Trial { half_opened: true });
        // Only the probe goes through while half-open.
        assert!(!c.allows(&s, 540));
        assert_eq!(c.acquire(&s, 540), Admission::Refused);
        assert_eq!(c.record_success(), Some(CircuitState::Closed));
        assert!(c.allows(&s, 540));
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let (c, s) = (Circuit::default(), settings());
        for t in 0..3 {
            c.record_failure(&s, t);
        }
        assert!(c.acquire(&s, 600).admitted());
        assert_eq!(c.record_failure(&s, 610), Some(CircuitState::Open));
        assert!(!c.allows(&s, 1000));
        assert!(c.allows(&s, 1110));
    }

    /// Many threads race for a backend whose cool-down has just ended: exactly one is let
    /// through as the trial, however the threads interleave; a lost trial is replaced by
    /// exactly one more a cool-down later.
    #[test]
    fn half_open_admits_exactly_one_trial_under_concurrency() {
        use std::sync::{Arc, Barrier};
        for round in 0..50 {
            let (c, s) = (Arc::new(Circuit::default()), settings());
            for t in 0..3 {
                c.record_failure(&s, t);
            }
            let threads = 16;
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (c, s, b) = (c.clone(), s.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        // What selection does: a pre-filter, then the decision.
                        (0..20).filter(|_| c.allows(&s, 600) && c.acquire(&s, 600).admitted()).count()
                    })
                })
                .collect();
            let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(admitted, 1, "round {round}: {admitted} trials let through");
            assert_eq!(c.state(), CircuitState::HalfOpen);
            assert_eq!(c.acquire(&s, 1099), Admission::Refused);
            assert_eq!(c.acquire(&s, 1100), Admission::Trial { half_opened: false }, "a lost trial is replaced");
            assert_eq!(c.acquire(&s, 1100), Admission::Refused);
        }
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let (c, s) = (Circuit::default(), settings());
        c.record_failure(&s, 0);
        c.record_failure(&s, 500);
        assert_eq!(c.record_failure(&s, 1200), None);
        assert_eq!(c.state(), CircuitState::Closed);
        // A success clears the count.
        c.record_success();
        c.record_failure(&s, 1300);
        assert_eq!(c.record_failure(&s, 1310), None);
    }
}
