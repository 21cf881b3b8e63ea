//! `routes[].ping`: WebSocket keepalive by the gateway (src/proxy/tunnel/keepalive.rs).

use super::schema::RouteSection;
use super::units::HumanDuration;
use super::ConfigError;
use crate::routes::Ping;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingSection {
    /// The client of a tunnel has sent nothing for this long: the gateway pings it. Default 30s.
    pub interval: Option<HumanDuration>,
    /// No pong within this after the ping: the gateway closes the tunnel with 1001 to both
    /// sides. Default 10s.
    pub timeout: Option<HumanDuration>,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `path` is the route's YAML path (`routes[i]`).
pub fn compile(path: &str, r: &RouteSection, errors: &mut Vec<ConfigError>) -> Option<Ping> {
    let p = r.ping.as_ref()?;
    if !r.websocket {
        errors.push(ConfigError::new(format!("{path}.ping"), "is set but websocket is false"));
    }
    let ping = Ping {
        interval: p.interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL),
        timeout: p.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT),
    };
    for (field, d) in [("interval", ping.interval), ("timeout", ping.timeout)] {
        if d.is_zero() {
            errors.push(ConfigError::new(format!("{path}.ping.{field}"), "must be more than 0"));
        }
    }
    Some(ping)
}
