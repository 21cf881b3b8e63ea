//! `routes[].ping`: WebSocket keepalive by the gateway (src/proxy/tunnel/keepalive.rs).

use super::schema::RouteSection;
use super::units::{positive, HumanDuration};
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
    Some(Ping {
        interval: positive(&format!("{path}.ping.interval"), p.interval, DEFAULT_INTERVAL, errors),
        timeout: positive(&format!("{path}.ping.timeout"), p.timeout, DEFAULT_TIMEOUT, errors),
    })
}
