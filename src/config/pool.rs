//! `providers[].pool` (connections per backend, queue) into [`PoolSettings`] (the pools are put
//! on a provider's backends by `crate::fleet::pool::attach`).

use super::units::{positive, HumanDuration};
use super::ConfigError;
use crate::fleet::pool::PoolSettings;
use serde::Deserialize;

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
    let queue_timeout =
        positive(&format!("{path}.pool.queue_timeout"), p.queue_timeout, PoolSettings::DEFAULT_QUEUE_TIMEOUT, errors);
    Some(PoolSettings {
        max_connections: max,
        max_idle: max_idle.min(max),
        queue: p.queue.unwrap_or(PoolSettings::DEFAULT_QUEUE),
        queue_timeout,
    })
}
