//! Provider pools: where a request may go. A provider is one URL (scheme, host, base path)
//! with one or more backends (socket addresses resolved at load), its key and timeouts.

pub mod health;
pub mod select;

use crate::auth::ModelGlobs;
use crate::secret::Secret;
use health::PassiveHealth;
use pingora_core::utils::tls::WrappedX509;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(300),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// TLS towards the provider.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Verify certificate and host name.
    pub verify: bool,
    /// Name sent as SNI and checked against the certificate.
    pub sni: String,
    /// Extra trusted CAs (with the system roots' place taken by these when set).
    pub ca: Option<Arc<[WrappedX509]>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("sni", &self.sni)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: usize,
    /// Requests in flight on this backend right now.
    pub inflight: AtomicUsize,
    pub health: PassiveHealth,
}

impl Backend {
    pub fn new(addr: SocketAddr, weight: usize) -> Self {
        Backend { addr, weight, inflight: AtomicUsize::new(0), health: PassiveHealth::default() }
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// `Host` header value sent upstream: the URL's host, with its port when not the default.
    pub host_header: String,
    /// The URL's path without a trailing slash (`""` for none): prefixed to forwarded paths.
    pub base_path: String,
    /// `None` for plain HTTP.
    pub tls: Option<UpstreamTls>,
    pub api_key: Option<Secret>,
    pub models: ModelGlobs,
    pub backends: Vec<Arc<Backend>>,
    pub timeouts: Timeouts,
    /// Round-robin cursor.
    cursor: AtomicUsize,
}

impl Provider {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        host_header: String,
        base_path: String,
        tls: Option<UpstreamTls>,
        api_key: Option<Secret>,
        models: ModelGlobs,
        backends: Vec<Arc<Backend>>,
        timeouts: Timeouts,
    ) -> Self {
        Provider {
            name: name.into(),
            host_header,
            base_path,
            tls,
            api_key,
            models,
            backends,
            timeouts,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Joins the base path and the (already prefix-stripped) request path.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let mut out = String::with_capacity(self.base_path.len() + path_and_query.len());
        out.push_str(&self.base_path);
        if !path_and_query.starts_with('/') {
            out.push('/');
        }
        out.push_str(path_and_query);
        out
    }

    pub fn next_cursor(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }
}
