//! Validation of `limits:`, per-key `limits:` and `server.trusted_proxies`.

use super::schema::{KeyLimitsSection, LimitsSection};
use super::ConfigError;
use crate::limits::per_ip::{IpLimits, DEFAULT_AUTH_FAILURES, DEFAULT_COOLOFF, DEFAULT_MAX_TRACKED};
use crate::limits::store::{OnStoreError, StoreSettings, StoreUrl};
use crate::limits::trusted_proxies::Cidr;
use crate::limits::{KeyLimits, LimitSettings, DEFAULT_IPV6_PREFIX, DEFAULT_WINDOW};

/// The compiled `limits:` section; `defaults` is what per-key limits fall back to.
pub struct Compiled {
    pub settings: LimitSettings,
    pub defaults: KeyLimits,
}

fn positive(path: &str, v: Option<u64>, errors: &mut Vec<ConfigError>) -> Option<u64> {
    if v == Some(0) {
        errors.push(ConfigError::new(path, "must be at least 1 (omit it for no limit)"));
    }
    v
}

fn key_section(path: &str, s: &KeyLimitsSection, base: KeyLimits, errors: &mut Vec<ConfigError>) -> KeyLimits {
    KeyLimits {
        rpm: positive(&format!("{path}.rpm"), s.rpm, errors).or(base.rpm),
        tpm: positive(&format!("{path}.tpm"), s.tpm, errors).or(base.tpm),
        concurrency: positive(&format!("{path}.concurrency"), s.concurrency, errors).or(base.concurrency),
        window: base.window,
    }
}

pub fn compile(l: &LimitsSection, trusted: Option<Vec<String>>, errors: &mut Vec<ConfigError>) -> Compiled {
    let window = l.window.map(|w| w.0).unwrap_or(DEFAULT_WINDOW);
    if window.as_millis() < 100 {
        errors.push(ConfigError::new("limits.window", "must be at least 100ms"));
    }
    let base = KeyLimits { window, ..KeyLimits::default() };
    let defaults = match &l.defaults {
        Some(d) => key_section("limits.defaults", d, base, errors),
        None => base,
    };
    let mut per_ip = IpLimits::default();
    if let Some(p) = &l.per_ip {
        per_ip.rpm = positive("limits.per_ip.rpm", p.rpm, errors);
        per_ip.auth_failures_per_min = match p.auth_failures_per_min {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(DEFAULT_AUTH_FAILURES),
        };
        per_ip.cooloff = p.cooloff.map(|c| c.0).unwrap_or(DEFAULT_COOLOFF);
        if per_ip.cooloff.is_zero() && per_ip.auth_failures_per_min.is_some() {
            errors.push(ConfigError::new("limits.per_ip.cooloff", "must be more than 0"));
        }
        per_ip.max_tracked = p.max_tracked.unwrap_or(DEFAULT_MAX_TRACKED);
        if per_ip.max_tracked < 16 {
            errors.push(ConfigError::new("limits.per_ip.max_tracked", "must be at least 16"));
        }
        per_ip.connections = positive("limits.per_ip.connections", p.connections, errors)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    }
    let mut trusted_proxies = Vec::new();
    for (i, t) in trusted.unwrap_or_default().iter().enumerate() {
        match Cidr::parse(t) {
            Ok(c) => trusted_proxies.push(c),
            Err(msg) => errors.push(ConfigError::new(format!("server.trusted_proxies[{i}]"), msg)),
        }
    }
    let ipv6_prefix = l.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
    if !(1..=128).contains(&ipv6_prefix) {
        errors.push(ConfigError::new("limits.ipv6_prefix", "must be between 1 and 128 (bits of an IPv6 address)"));
    }
    let store = store(l, errors);
    Compiled { settings: LimitSettings { per_ip, trusted_proxies, ipv6_prefix, store }, defaults }
}

fn store(l: &LimitsSection, errors: &mut Vec<ConfigError>) -> StoreSettings {
    let mut s = StoreSettings::default();
    match l.store.as_deref() {
        None | Some("local") => {}
        Some(u) => match StoreUrl::parse(u) {
            Ok(u) => s.url = Some(u),
            Err(msg) => errors.push(ConfigError::new("limits.store", msg)),
        },
    }
    s.cluster = l.store_cluster.unwrap_or(false);
    if s.cluster && s.url.is_none() {
        errors.push(ConfigError::new("limits.store_cluster", "needs limits.store to be a Redis URL"));
    }
    if let Some(m) = &l.on_store_error {
        match OnStoreError::parse(m) {
            Some(m) => s.on_error = m,
            None => errors.push(ConfigError::new("limits.on_store_error", "must be `local` or `closed`")),
        }
    }
    if let Some(t) = l.store_timeout {
        s.timeout = t.0;
        if !(1..=10_000).contains(&t.0.as_millis()) {
            errors.push(ConfigError::new("limits.store_timeout", "must be between 1ms and 10s"));
        }
    }
    s
}

/// One key's limits: its own fields over `limits.defaults`.
pub fn key(path: &str, own: Option<KeyLimitsSection>, c: &Compiled, errors: &mut Vec<ConfigError>) -> KeyLimits {
    match own {
        Some(s) => key_section(&format!("{path}.limits"), &s, c.defaults, errors),
        None => c.defaults,
    }
}
