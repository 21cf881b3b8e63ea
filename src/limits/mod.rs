//! Local, exact limits. Per key: requests and tokens per window, and requests in flight,
//! counted in a [`KeyState`] per configured key (the key table is known when the config is
//! compiled, so no sketch is needed and nothing is ever over-counted). Per client IP before
//! authentication: [`per_ip::IpGuard`].
//!
//! Windows are fixed and anchored at the first request after the previous window ended (not
//! aligned to the wall clock), so a burst is never split across a boundary by accident.
//! A reload hands a key's [`KeyState`] to the key of the same name in the new config, so
//! rotation never resets a window.

pub mod open_connections;
pub mod per_ip;
pub mod store;
pub mod trusted_proxies;

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a key may do; `None` is unlimited. Resolved against `limits.defaults` at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion, from the response's `usage`) per window.
    pub tpm: Option<u64>,
    /// Requests in flight, streams included.
    pub concurrency: Option<u64>,
    /// Window length (`limits.window`, default 60 s).
    pub window: Duration,
}

/// The runtime's limit settings that are not per key (those live in each key's entry).
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub per_ip: per_ip::IpLimits,
    pub trusted_proxies: Vec<trusted_proxies::Cidr>,
    /// IPv6 clients are counted per network of this prefix length (`limits.ipv6_prefix`).
    pub ipv6_prefix: u8,
    /// `limits.store` and its companions: where per-key counters live.
    pub store: store::StoreSettings,
}

pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_ip: Default::default(),
            trusted_proxies: Vec::new(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            store: Default::default(),
        }
    }
}

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits { rpm: None, tpm: None, concurrency: None, window: DEFAULT_WINDOW }
    }
}

impl KeyLimits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }
}

/// Which limit refused a request (the `code` of the 429 and the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
    IpRequests,
    AuthFailures,
}

impl LimitKind {
    /// OpenAI error `code` and metric `reason`.
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::Requests => "rate_limit_requests",
            LimitKind::Tokens => "rate_limit_tokens",
            LimitKind::Concurrency => "rate_limit_concurrency",
            LimitKind::IpRequests => "rate_limit_ip_requests",
            LimitKind::AuthFailures => "too_many_auth_failures",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            LimitKind::Requests => "rate limit reached for requests of this API key",
            LimitKind::Tokens => "rate limit reached for tokens of this API key",
            LimitKind::Concurrency => "too many concurrent requests for this API key",
            LimitKind::IpRequests => "rate limit reached for requests from this address",
            LimitKind::AuthFailures => "too many failed authentications from this address; try again later",
        }
    }
}

/// A refusal: which limit, and after how long a retry can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

impl Refusal {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after.as_millis() as u64).max(1)
    }
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[derive(Debug, Default)]
struct Window {
    /// When the current window started (`now_ms`); `None` before the first request.
    start: Option<u64>,
    requests: u64,
    tokens: u64,
}

impl Window {
    /// Starts a new window if the current one has ended; returns ms until it ends.
    fn roll(&mut self, now: u64, len: u64) -> u64 {
        match self.start {
            Some(s) if now < s.saturating_add(len) => s + len - now,
            _ => {
                *self = Window { start: Some(now), requests: 0, tokens: 0 };
                len
            }
        }
    }
}

/// The counters of one configured key. Shared by every request of that key and carried
/// over by name across reloads.
#[derive(Debug, Default)]
pub struct KeyState {
    window: Mutex<Window>,
    inflight: AtomicU64,
}

/// Remaining budget, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub limits: KeyLimits,
    pub requests: u64,
    pub tokens: u64,
    /// Until the window ends (and both counts reset).
    pub reset: Duration,
}

impl Snapshot {
    /// OpenAI's headers for the limits that are set (an unlimited dimension has none).
    /// Values are built without intermediate strings: they are on every response.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let mut out = Vec::with_capacity(7);
        let reset = format_reset(self.reset);
        if let Some(l) = self.limits.rpm {
            out.push(("x-ratelimit-limit-requests", HeaderValue::from(l)));
            out.push(("x-ratelimit-remaining-requests", HeaderValue::from(l.saturating_sub(self.requests))));
            out.push(("x-ratelimit-reset-requests", reset.clone()));
        }
        if let Some(l) = self.limits.tpm {
            out.push(("x-ratelimit-limit-tokens", HeaderValue::from(l)));
            out.push(("x-ratelimit-remaining-tokens", HeaderValue::from(l.saturating_sub(self.tokens))));
            out.push(("x-ratelimit-reset-tokens", reset));
        }
        out
    }
}

/// OpenAI writes resets like `1s`, `6m0s`, `20ms`.
pub fn format_reset(d: Duration) -> HeaderValue {
    HeaderValue::from_bytes(ResetText::of(d).as_bytes()).unwrap_or(HeaderValue::from_static("0s"))
}

/// The text [`format_reset`] gives, on the stack (at most `u64::MAX / 60`, `m`, `59`, `s`).
pub struct ResetText {
    buf: [u8; 32],
    len: usize,
}

impl ResetText {
    pub fn of(d: Duration) -> Self {
        let ms = d.as_millis() as u64;
        let mut out = ResetText { buf: [0; 32], len: 0 };
        let mut put = |n: u64, unit: &[u8]| {
            for b in itoa::Buffer::new().format(n).as_bytes().iter().chain(unit) {
                out.buf[out.len] = *b;
                out.len += 1;
            }
        };
        if ms < 1000 {
            put(ms, b"ms");
        } else {
            let s = ceil_secs(ms);
            if s >= 60 {
                put(s / 60, b"m");
            }
            put(s % 60, b"s");
        }
        out
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl KeyState {
    pub fn new() -> Arc<Self> {
        Arc::new(KeyState::default())
    }

    /// Admits a request or says which limit refuses it. An admitted request counts towards
    /// `rpm` and, when `concurrency` is set, holds a [`Slot`] until it is dropped. Refused
    /// requests count towards nothing.
    pub fn admit(self: &Arc<Self>, l: &KeyLimits, now: u64) -> Result<(Option<Slot>, Snapshot), Refusal> {
        let len = l.window.as_millis() as u64;
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let left = w.roll(now, len);
        let refuse = |kind| Refusal { kind, retry_after: Duration::from_millis(left) };
        if l.tpm.is_some_and(|t| w.tokens >= t) {
            return Err(refuse(LimitKind::Tokens));
        }
        if l.rpm.is_some_and(|r| w.requests >= r) {
            return Err(refuse(LimitKind::Requests));
        }
        let slot = match l.concurrency {
            Some(max) => {
                if self.inflight.fetch_add(1, Ordering::AcqRel) >= max {
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                    // A slot frees when some request ends: no better estimate than a second.
                    return Err(Refusal { kind: LimitKind::Concurrency, retry_after: Duration::from_secs(1) });
                }
                Some(Slot(self.clone()))
            }
            None => None,
        };
        w.requests += 1;
        let snap = Snapshot { limits: *l, requests: w.requests, tokens: w.tokens, reset: Duration::from_millis(left) };
        Ok((slot, snap))
    }

    /// Charges tokens reported by a response to the current window.
    pub fn charge(&self, l: &KeyLimits, tokens: u64, now: u64) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.roll(now, l.window.as_millis() as u64);
        w.tokens = w.tokens.saturating_add(tokens);
    }

    pub fn snapshot(&self, l: &KeyLimits, now: u64) -> Snapshot {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let left = w.roll(now, l.window.as_millis() as u64);
        Snapshot { limits: *l, requests: w.requests, tokens: w.tokens, reset: Duration::from_millis(left) }
    }

    /// Requests of this key in flight that hold a slot.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }
}

/// A concurrency slot: released when dropped, which happens when the request's context is
/// dropped — however the request ended (finished, client gone, upstream failed).
#[derive(Debug)]
pub struct Slot(Arc<KeyState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lim(rpm: Option<u64>, tpm: Option<u64>, c: Option<u64>) -> KeyLimits {
        KeyLimits { rpm, tpm, concurrency: c, window: Duration::from_secs(60) }
    }

    #[test]
    fn rpm_is_exact_and_window_rolls() {
        let s = KeyState::new();
        let l = lim(Some(3), None, None);
        for i in 1..=3 {
            let (_, snap) = s.admit(&l, 1000).unwrap();
            assert_eq!(snap.requests, i);
        }
        let r = s.admit(&l, 30_000).unwrap_err();
        assert_eq!(r.kind, LimitKind::Requests);
        assert_eq!(r.retry_after_secs(), 31);
        assert!(s.admit(&l, 61_000).is_ok(), "a new window starts after 60 s");
    }

    #[test]
    fn tokens_refuse_while_over_budget() {
        let s = KeyState::new();
        let l = lim(None, Some(100), None);
        s.admit(&l, 0).unwrap();
        s.charge(&l, 99, 10);
        s.admit(&l, 20).unwrap();
        s.charge(&l, 5, 30);
        assert_eq!(s.admit(&l, 40).unwrap_err().kind, LimitKind::Tokens);
        let snap = s.snapshot(&l, 40);
        assert_eq!(snap.headers().iter().find(|h| h.0 == "x-ratelimit-remaining-tokens").unwrap().1, "0");
    }

    #[test]
    fn concurrency_slots_release_on_drop() {
        let s = KeyState::new();
        let l = lim(None, None, Some(2));
        let a = s.admit(&l, 0).unwrap().0;
        let b = s.admit(&l, 0).unwrap().0;
        assert_eq!(s.admit(&l, 0).unwrap_err().kind, LimitKind::Concurrency);
        drop(a);
        let c = s.admit(&l, 0).unwrap().0;
        assert_eq!(s.inflight(), 2);
        drop((b, c));
        assert_eq!(s.inflight(), 0);
    }

    /// 10,000 active keys, each exactly at its limit: none is refused before, each is refused
    /// after (exact counters, unlike a count-min sketch at default sizing).
    #[test]
    fn ten_thousand_keys_are_counted_exactly() {
        let l = lim(Some(5), None, None);
        let states: Vec<_> = (0..10_000).map(|_| KeyState::new()).collect();
        for _ in 0..5 {
            for s in &states {
                assert!(s.admit(&l, 5).is_ok());
            }
        }
        assert!(states.iter().all(|s| s.admit(&l, 6).is_err()));
    }

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
