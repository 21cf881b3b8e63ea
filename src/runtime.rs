//! The compiled, immutable configuration the request path reads. A reload builds a new one
//! and swaps it in atomically; requests in flight keep the one they started with.

use crate::auth::KeyTable;
use crate::routes::RouteTable;
use crate::upstream::Provider;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub threads: usize,
    pub max_body: u64,
    pub tls: Option<ListenTls>,
    pub client_read_timeout: Duration,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// Gateway-wide caps on open event streams and WebSocket tunnels (`None`: no cap).
    pub max_streams: Option<usize>,
    pub max_tunnels: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ListenTls {
    pub cert: String,
    pub key: String,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub access_log: bool,
    pub level: String,
}

#[derive(Debug)]
pub struct Runtime {
    pub server: ServerSettings,
    pub admin_listen: String,
    pub keys: KeyTable,
    pub providers: Vec<Arc<Provider>>,
    pub routes: RouteTable,
    pub log: LogSettings,
    pub limits: crate::limits::LimitSettings,
    /// Seals MCP backend identities; `Some` whenever a route has `kind: mcp`.
    pub mcp: Option<crate::mcp::seal::Sealer>,
}

impl Runtime {
    /// The first provider whose `models` globs match.
    pub fn provider_for_model(&self, model: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.models.allows(model))
    }

    /// `provider` when any of its backends may take a request, else its first fallback that
    /// can (one level: a fallback's own fallbacks are not followed); `None` when none can.
    pub fn serving(&self, provider: &Arc<Provider>) -> Option<Arc<Provider>> {
        let now = crate::upstream::clock::now_ms();
        if provider.any_usable(now) {
            return Some(provider.clone());
        }
        provider
            .fleet
            .fallbacks
            .iter()
            .filter_map(|name| self.providers.iter().find(|p| *p.name == **name))
            .find(|p| p.any_usable(now))
            .cloned()
    }
}
