//! DNS discovery of a provider's backends (`providers[].discover`, and the URL's host of a
//! provider without `backends`): one background task per discovering provider asks DNS again
//! every `interval` (sooner when the answer's TTL is shorter) and, when the set of addresses
//! changed, swaps in the provider with that set through the same carry-over a config reload
//! uses (`crate::reload`): unchanged backends keep their health, circuit and in-flight state,
//! removed ones leave the ring while requests that hold them finish, added ones join it.
//! A failed or empty answer keeps the last good set; it is counted
//! (`mcas_discovery_resolutions_total`) and shown in `/health` ([`status`]).

pub mod resolve;
pub mod status;
pub mod task;

use std::net::SocketAddr;
use std::time::Duration;

/// What to ask DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    /// A records of `host` (AAAA when it has none); every address with `port`, weight 1.
    Host { host: String, port: u16 },
    /// SRV records of `name`: each target's addresses with the record's port and weight.
    Srv { name: String },
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Query::Host { host, port } => write!(f, "{host}:{port}"),
            Query::Srv { name } => write!(f, "SRV {name}"),
        }
    }
}

/// A provider's discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    pub query: Query,
    /// Longest time between two resolutions (a shorter TTL in the answer comes first).
    pub interval: Duration,
    /// `discover.resolver`; `None`: the system's resolvers (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolver: Option<SocketAddr>,
    /// `true` when this is the URL's host of a provider without `backends` or `discover`.
    pub from_url: bool,
}

/// Default `discover.interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the URL's host of a provider without `backends` or `discover` is asked again.
pub const URL_INTERVAL: Duration = Duration::from_secs(30);
/// A TTL shorter than this (dnsmasq answers from its hosts files with TTL 0) does not make
/// the task ask more often than once per this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Discover {
    /// The same DNS question to the same server: the backends found for one are good for the
    /// other (a reload that changes only `interval` keeps the discovered set).
    pub fn same_source(&self, other: &Discover) -> bool {
        self.query == other.query && self.resolver == other.resolver
    }
}

/// One discovered backend: address and weight (SRV weight, at least 1).
pub type Member = (SocketAddr, usize);
