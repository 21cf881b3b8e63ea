//! `limits.per_ip.connections`: open client connections per address. Pingora has no hook
//! that sees a connection both open and close, so the cap sits at two places:
//!
//! - [`Gate`] is the listener's connection filter (pingora-core's `ConnectionFilter`, called
//!   right after `accept()`, before the TLS handshake): an address already at its cap has the
//!   new socket closed there, before a byte is read or a handshake is paid for. So has an
//!   address cooling off after too many failed authentications (`limits.per_ip.
//!   auth_failures_per_min`) once it has had its 429 with `Retry-After`: a key guesser's every
//!   further attempt then costs an accept and a close instead of an HTTP exchange.
//! - [`PerIpConnections`] wraps the proxy application and holds a [`ConnSlot`] for the whole
//!   life of each connection (every keep-alive request on it); it is what counts, and it also
//!   closes the connections that raced past the filter.
//!
//! Addresses in `server.trusted_proxies` are exempt: all their clients share one address.
//! Refusals are counted in `mcas_connections_refused_total{reason="per_ip"|"cooloff"}`;
//! nothing is logged per refusal (a flood would flood the log too).

use crate::clock::now_ms;
use crate::limits::open_connections::{ConnSlot, ConnTable};
use crate::limits::per_ip::IpGuard;
use crate::observe::metrics::metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The cap's configuration (read per connection, so a reload applies to new connections) and
/// the count of open connections per address (process-wide, so it survives reloads).
pub struct Gate {
    runtime: Arc<ArcSwap<Runtime>>,
    table: Arc<ConnTable>,
    /// The proxy's per-address guard (cooling-off state).
    guard: Arc<IpGuard>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("addresses", &self.table.addresses()).finish()
    }
}

impl Gate {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, guard: Arc<IpGuard>) -> Arc<Self> {
        Arc::new(Gate { runtime, table: Default::default(), guard })
    }

    /// What the per-address limits count `ip` as: an IPv6 client by its `limits.ipv6_prefix`
    /// network, like every other per-address limit (`src/limits/trusted_proxies.rs`).
    fn bucket(&self, ip: IpAddr) -> IpAddr {
        crate::limits::trusted_proxies::limit_bucket(ip, self.runtime.load().limits.ipv6_prefix)
    }

    /// The cap that applies to `ip`, if any.
    fn cap(&self, ip: IpAddr) -> Option<usize> {
        let rt = self.runtime.load();
        let cap = rt.limits.per_ip.connections?;
        if rt.limits.trusted_proxies.iter().any(|c| c.contains(ip)) {
            return None;
        }
        Some(cap)
    }

    /// Why a new connection from `ip` is closed at accept, if it is.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let rt = self.runtime.load();
        if rt.limits.trusted_proxies.iter().any(|c| c.contains(ip)) {
            return None; // its clients are told apart by X-Forwarded-For, per request
        }
        let ip = self.bucket(ip);
        if rt.limits.per_ip.connections.is_some_and(|cap| self.table.open(ip) >= cap) {
            return Some("per_ip");
        }
        if rt.limits.per_ip.auth_failures_per_min.is_some() && self.guard.told_to_cool_off(ip, now_ms()) {
            return Some("cooloff");
        }
        None
    }

    /// A slot for a new connection from `ip`: `Ok(None)` when no cap applies, `Err` when `ip`
    /// is at its cap.
    fn admit(&self, ip: IpAddr) -> Result<Option<ConnSlot>, ()> {
        match self.cap(ip) {
            None => Ok(None),
            Some(cap) => self.table.try_open(self.bucket(ip), cap).map(Some).ok_or(()),
        }
    }
}

fn count_refusal(reason: &str) {
    if let Some(m) = metrics() {
        m.connections_refused.with_label_values(&[reason]).inc();
    }
}

#[async_trait]
impl ConnectionFilter for Gate {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(ip) = addr.map(SocketAddr::ip) else {
            return true;
        };
        match self.refusal(ip) {
            Some(reason) => {
                count_refusal(reason);
                false
            }
            None => true,
        }
    }
}

/// The proxy application behind the per-address connection count.
pub struct PerIpConnections<A> {
    inner: Arc<A>,
    gate: Arc<Gate>,
    /// Counts every connection while it is open, for the drain at shutdown (`crate::drain`).
    drain: crate::drain::Drain,
}

impl<A> PerIpConnections<A> {
    pub fn new(inner: A, gate: Arc<Gate>, drain: crate::drain::Drain) -> Self {
        PerIpConnections { inner: Arc::new(inner), gate, drain }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for PerIpConnections<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Held until the connection is done with, across all its requests.
        let _slot = match peer.map(|ip| self.gate.admit(ip)) {
            Some(Err(())) => {
                count_refusal("per_ip");
                return None; // dropping the stream closes the socket
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        let _open = self.drain.hold();
        // What Pingora's service loop would do with a reusable connection, kept here so the
        // slot and the drain's count live as long as the connection.
        let mut stream = stream;
        while let Some(next) = self.inner.process_new(stream, shutdown).await {
            stream = next;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate(yaml: &str) -> Arc<Gate> {
        let keys = "keys:\n  - name: k\n    key: k-0123456789abcdef\n    models: [\"*\"]\n";
        let rt = crate::config::load_str(&format!("{keys}{yaml}"), &|_: &str| None).unwrap();
        Gate::new(Arc::new(ArcSwap::from_pointee(rt)), Default::default())
    }

    #[test]
    fn ipv6_clients_share_their_prefix_cap() {
        let g = gate("limits:\n  per_ip:\n    connections: 2\n");
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _s1 = g.admit(a).unwrap();
        let _s2 = g.admit(b).unwrap();
        // Same /64 (the default limits.ipv6_prefix): the third connection is over the cap.
        assert_eq!(g.refusal(a), Some("per_ip"));
        assert!(g.admit("2001:db8:1:2::77".parse().unwrap()).is_err());
        assert_eq!(g.refusal(other), None);
        let per_address = gate("limits:\n  ipv6_prefix: 128\n  per_ip:\n    connections: 1\n");
        let _s = per_address.admit(a).unwrap();
        assert_eq!(per_address.refusal(b), None);
    }
}
