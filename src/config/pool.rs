//! `providers[].pool` (connections per backend, queue) into [`PoolSettings`], and the pools
//! put on a provider's backends with their metrics.

use super::units::HumanDuration;
use super::ConfigError;
use crate::fleet::pool::{ConnPool, PoolSettings};
use crate::fleet::Backend;
use crate::observe::metrics::metrics;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Connections to one backend at once (each carries one request). Required, at least 1.
    pub max_connections: Option<usize>,
    /// Connections kept open between requests, per backend. Default: `max_connections`.
    pub max_idle: Option<usize>,
    /// Requests that may wait for a connection, per backend; beyond: 503. Default 100; 0
    /// refuses at once.
    pub queue: Option<usize>,
    /// Longest wait for a connection; beyond: 503 with `Retry-After`. Default 10s.
    pub queue_timeout: Option<HumanDuration>,
}

/// `path` is the provider's YAML path (`providers[i]`).
pub fn settings(path: &str, p: Option<&PoolSection>, errors: &mut Vec<ConfigError>) -> Option<PoolSettings> {
    let p = p?;
    let Some(max) = p.max_connections.filter(|m| *m > 0) else {
        errors.push(ConfigError::new(format!("{path}.pool.max_connections"), "is required and must be at least 1"));
        return None;
    };
    let max_idle = p.max_idle.unwrap_or(max);
    if max_idle > max {
        errors.push(ConfigError::new(format!("{path}.pool.max_idle"), "must not exceed max_connections"));
    }
    let queue_timeout = p.queue_timeout.map(|d| d.0).unwrap_or(PoolSettings::DEFAULT_QUEUE_TIMEOUT);
    if queue_timeout.is_zero() {
        errors.push(ConfigError::new(format!("{path}.pool.queue_timeout"), "must be more than 0"));
    }
    Some(PoolSettings {
        max_connections: max,
        max_idle: max_idle.min(max),
        queue: p.queue.unwrap_or(PoolSettings::DEFAULT_QUEUE),
        queue_timeout,
    })
}

/// Gives each (new, not yet shared) backend its pool, reporting to
/// `mcas_upstream_pool_connections{provider, backend, state}`.
pub fn attach(provider: &str, backends: &mut [Arc<Backend>], settings: Option<PoolSettings>, idle: Duration) {
    let Some(settings) = settings else { return };
    for b in backends.iter_mut() {
        let labels = [provider.to_string(), b.addr.to_string()];
        let Some(b) = Arc::get_mut(b) else { continue };
        let observer: crate::fleet::pool::Observer = Box::new(move |c| {
            let Some(m) = metrics() else { return };
            for (state, v) in [("in_use", c.in_use), ("idle", c.idle), ("waiting", c.waiting)] {
                m.pool_connections.with_label_values(&[&labels[0], &labels[1], state]).set(v as i64);
            }
        });
        b.pool = Some(Arc::new(ConnPool::new(settings, idle, Some(observer))));
    }
}
