//! The pre-authentication guard, per client address: a request rate, and a count of failed
//! authentications that, once reached, refuses the address for a cooling-off period — so keys
//! cannot be guessed at line rate.
//!
//! State lives in a bounded map (16 shards, `max_tracked` addresses in all). A full shard first
//! drops entries that are idle and not cooling off; if still full, it evicts the least recently
//! seen of a few sampled entries (approximate LRU, O(1)). Counts are exact for tracked
//! addresses: unlike a count-min sketch, nobody else's traffic is ever charged to an address.

use super::{LimitKind, Refusal};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const SHARDS: usize = 16;
const EVICTION_SAMPLE: usize = 8;
/// Both per-address counts are per minute.
const WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimits {
    /// Requests per minute from one address, before authentication. `None`: unlimited.
    pub rpm: Option<u64>,
    /// Failed authentications per minute that start a cooling-off period. `None`: off.
    pub auth_failures_per_min: Option<u64>,
    pub cooloff: Duration,
    pub max_tracked: usize,
    /// Open connections from one address (`limits.per_ip.connections`). `None`: no cap.
    pub connections: Option<usize>,
}

pub const DEFAULT_AUTH_FAILURES: u64 = 20;
pub const DEFAULT_COOLOFF: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

impl Default for IpLimits {
    fn default() -> Self {
        IpLimits {
            rpm: None,
            auth_failures_per_min: Some(DEFAULT_AUTH_FAILURES),
            cooloff: DEFAULT_COOLOFF,
            max_tracked: DEFAULT_MAX_TRACKED,
            connections: None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    req_start: u64,
    requests: u64,
    fail_start: u64,
    failures: u64,
    cool_until: u64,
    /// The address got its 429 for this cooling-off period (see [`IpGuard::told_to_cool_off`]).
    told: bool,
    last_seen: u64,
}

impl Entry {
    fn idle(&self, now: u64) -> bool {
        now >= self.cool_until && now >= self.last_seen.saturating_add(WINDOW_MS)
    }
}

#[derive(Debug)]
pub struct IpGuard {
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    /// The latest end of any cooling-off period ever started (0: none yet). While the clock is
    /// past it no address is cooling off, so an address whose only limit is on failures needs
    /// no look-up (a keyed hash of the address and a shard lock on every request).
    cooling_until: AtomicU64,
}

impl Default for IpGuard {
    fn default() -> Self {
        IpGuard {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            cooling_until: AtomicU64::new(0),
        }
    }
}

impl IpGuard {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// Called for every request before the key is checked. The clock is read only when the
    /// address may be refused.
    pub fn check(&self, ip: IpAddr, l: &IpLimits, now: impl FnOnce() -> u64) -> Result<(), Refusal> {
        if l.rpm.is_some() {
            return self.look_up(ip, l, now());
        }
        if l.auth_failures_per_min.is_none() {
            return Ok(());
        }
        // Only failures are limited, so only an address cooling off is refused: none is when
        // none ever was, or when the clock is past the end of every period.
        let until = self.cooling_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = now();
        if until <= now {
            return Ok(());
        }
        self.look_up(ip, l, now)
    }

    fn look_up(&self, ip: IpAddr, l: &IpLimits, now: u64) -> Result<(), Refusal> {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let Some(rpm) = l.rpm else {
            // Only failures are limited: look, but do not track addresses that never failed.
            return match map.get_mut(&ip) {
                Some(e) if e.cool_until > now => Err(cooling(e, now)),
                _ => Ok(()),
            };
        };
        let e = entry(&mut map, ip, l, now);
        if e.cool_until > now {
            return Err(cooling(e, now));
        }
        if now >= e.req_start.saturating_add(WINDOW_MS) || e.requests == 0 {
            e.req_start = now;
            e.requests = 0;
        }
        if e.requests >= rpm {
            let left = (e.req_start + WINDOW_MS).saturating_sub(now);
            return Err(Refusal { kind: LimitKind::IpRequests, retry_after: Duration::from_millis(left) });
        }
        e.requests += 1;
        Ok(())
    }

    /// Called when a presented credential was refused.
    pub fn failed(&self, ip: IpAddr, l: &IpLimits, now: u64) {
        let Some(max) = l.auth_failures_per_min else { return };
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let e = entry(&mut map, ip, l, now);
        if now >= e.fail_start.saturating_add(WINDOW_MS) || e.failures == 0 {
            e.fail_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= max {
            e.cool_until = now.saturating_add(l.cooloff.as_millis() as u64);
            e.told = false;
            e.failures = 0;
            self.cooling_until.fetch_max(e.cool_until, Ordering::Release);
        }
    }

    /// Whether `ip` is cooling off after too many failed authentications and has already been
    /// answered 429 for it, so its further connections can be closed without an answer.
    pub fn told_to_cool_off(&self, ip: IpAddr, now: u64) -> bool {
        if self.cooling_until.load(Ordering::Acquire) <= now {
            return false; // no address is cooling off (see `check`)
        }
        let map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).is_some_and(|e| e.told && e.cool_until > now)
    }

    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }
}

fn cooling(e: &mut Entry, now: u64) -> Refusal {
    e.told = true;
    Refusal { kind: LimitKind::AuthFailures, retry_after: Duration::from_millis(e.cool_until - now) }
}

fn entry<'a>(map: &'a mut HashMap<IpAddr, Entry>, ip: IpAddr, l: &IpLimits, now: u64) -> &'a mut Entry {
    let cap = (l.max_tracked / SHARDS).max(1);
    if !map.contains_key(&ip) && map.len() >= cap {
        map.retain(|_, e| !e.idle(now));
        if map.len() >= cap {
            let victim = map.iter().take(EVICTION_SAMPLE).min_by_key(|(_, e)| e.last_seen).map(|(k, _)| *k);
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
    }
    let e = map.entry(ip).or_default();
    e.last_seen = now;
    e
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    #[test]
    fn failures_start_a_cooloff() {
        let g = IpGuard::default();
        let l = IpLimits { auth_failures_per_min: Some(3), cooloff: Duration::from_secs(10), ..Default::default() };
        for _ in 0..2 {
            g.failed(ip(1), &l, 100);
        }
        assert!(g.check(ip(1), &l, || 100).is_ok());
        g.failed(ip(1), &l, 200);
        assert!(!g.told_to_cool_off(ip(1), 300), "told before its 429");
        let r = g.check(ip(1), &l, || 300).unwrap_err();
        assert_eq!((r.kind, r.retry_after_secs()), (LimitKind::AuthFailures, 10));
        assert!(g.told_to_cool_off(ip(1), 300));
        assert!(!g.told_to_cool_off(ip(1), 10_200), "still told after the cooloff");
        assert!(g.check(ip(2), &l, || 300).is_ok(), "other addresses are not affected");
        assert!(g.check(ip(1), &l, || 10_200).is_ok(), "the cooloff ends");
    }

    /// `check` without the look-up (no address cooling off) refuses exactly what the look-up
    /// refuses, while periods of several addresses start, overlap and end.
    #[test]
    fn the_quick_answer_is_the_look_ups() {
        let g = IpGuard::default();
        let l = IpLimits { auth_failures_per_min: Some(2), cooloff: Duration::from_secs(1), ..Default::default() };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut refused = 0;
        for now in (1..20_000).step_by(7) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(64) {
                g.failed(ip((x >> 8) as u32 % 4), &l, now);
            }
            for n in 0..4 {
                let got = g.check(ip(n), &l, || now);
                assert_eq!(got, g.look_up(ip(n), &l, now), "{n} at {now}");
                assert_eq!(g.told_to_cool_off(ip(n), now), got.is_err(), "{n} at {now}");
                refused += usize::from(got.is_err());
            }
        }
        // Both answers were given often.
        assert!(refused > 1000 && refused < 4 * 2857 - 1000, "{refused}");
    }

    #[test]
    fn request_rate_per_address() {
        let g = IpGuard::default();
        let l = IpLimits { rpm: Some(2), ..Default::default() };
        assert!(g.check(ip(1), &l, || 0).is_ok());
        assert!(g.check(ip(1), &l, || 1).is_ok());
        assert_eq!(g.check(ip(1), &l, || 2).unwrap_err().kind, LimitKind::IpRequests);
        assert!(g.check(ip(1), &l, || 60_001).is_ok());
    }

    #[test]
    fn map_is_bounded() {
        let g = IpGuard::default();
        let l = IpLimits { rpm: Some(100), max_tracked: 1600, ..Default::default() };
        for n in 0..50_000 {
            g.check(ip(n), &l, || 5).unwrap();
        }
        assert!(g.tracked() <= 1600, "{}", g.tracked());
    }
}
