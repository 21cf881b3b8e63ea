//! The one monotonic millisecond clock of the process: limits windows, health and circuit
//! state kept in atomics. Functions that decide take `now` as an argument so tests can drive
//! time.

use once_cell::sync::Lazy;
use std::time::Instant;

static START: Lazy<Instant> = Lazy::new(Instant::now);

/// Milliseconds since the process first asked (monotonic; starts at 1 so 0 can mean "never").
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `t`, an instant read for something else (no second clock read).
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(*START).as_millis() as u64 + 1
}

/// Microseconds since the process first asked (same origin as [`now_ms`], starts at 1).
pub fn now_us() -> u64 {
    START.elapsed().as_micros() as u64 + 1
}
