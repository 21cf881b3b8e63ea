//! The per-request context, grouped by the step that fills it.

use super::usage::UsageObserver;
use crate::fleet::{Backend, Provider};
use crate::keys::KeyEntry;
use crate::runtime::Runtime;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What the request path learned before choosing an upstream. It travels from the main
/// request into a subrequest (the model list).
#[derive(Debug, Clone)]
pub struct Routed {
    pub runtime: Arc<Runtime>,
    pub request_id: String,
    pub started: Instant,
    pub key: Arc<KeyEntry>,
    pub route_label: Arc<str>,
    pub provider: Arc<Provider>,
    /// Indices of the route and the provider in `runtime` (for its bound metrics).
    pub route_index: usize,
    pub provider_index: usize,
    /// Bytes the provider's ketama ring is walked from (see `providers[].hash_key`).
    pub hash_key: Vec<u8>,
    /// Path and query to send upstream (base path joined).
    pub upstream_path: String,
    pub model: Option<String>,
    pub stream: bool,
    pub client_ip: Option<String>,
    pub client_proto: &'static str,
    /// The gateway added `stream_options.include_usage`: remove the usage event it causes.
    pub strip_usage: bool,
    /// The body was rewritten to this length (sent with this `Content-Length`).
    pub body_len: Option<usize>,
    /// The rewritten body, which replaces Pingora's retry buffer in `request_body_filter`.
    pub new_body: Option<bytes::Bytes>,
    /// WebSocket, event-stream and MCP settings of the route, and MCP pinning.
    pub streams: super::long_lived::RouteStreams,
    /// `balance: inference`: the request's demand and charge (released with the request).
    pub inference: Option<Arc<crate::fleet::inference::Ticket>>,
}

impl Routed {
    /// The request and duration series of this route and provider.
    pub fn metrics(&self) -> Option<&crate::observe::bound::RouteMetrics> {
        self.runtime.metrics.pair(self.route_index, self.provider_index)
    }

    /// The upstream series of this provider.
    pub fn provider_metrics(&self) -> Option<&crate::observe::bound::ProviderMetrics> {
        self.runtime.metrics.provider(self.provider_index)
    }
}

#[derive(Default)]
pub struct UpstreamState {
    /// Indices of backends this request already failed to connect to: inline up to four
    /// (every request has one), so choosing a backend allocates nothing.
    pub tried: smallvec::SmallVec<[usize; 4]>,
    pub backend: Option<Arc<Backend>>,
    pub chosen_at: Option<Instant>,
    pub header_at: Option<Instant>,
    /// Whether `backend.inflight` was incremented (and must be decremented).
    pub counted: bool,
    /// `providers[].pool`: this request's connection slot on `backend` (see `upstream/pool.rs`).
    pub pool_slot: Option<crate::fleet::pool::Slot>,
}

impl UpstreamState {
    /// Moves the in-flight count to `backend`.
    pub fn set_backend(&mut self, backend: Arc<Backend>) {
        self.release();
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        self.backend = Some(backend);
        self.counted = true;
    }

    pub fn release(&mut self) {
        self.pool_slot = None;
        if self.counted {
            if let Some(b) = &self.backend {
                b.inflight.fetch_sub(1, Ordering::Relaxed);
            }
            self.counted = false;
        }
    }
}

impl Drop for UpstreamState {
    fn drop(&mut self) {
        self.release();
    }
}

pub struct Ctx {
    pub started: Instant,
    pub request_id: String,
    pub routed: Option<Routed>,
    pub upstream: UpstreamState,
    pub usage: UsageObserver,
    /// Name of the key, once authenticated (for logs of refused requests too).
    pub key_name: Option<Arc<str>>,
    /// This main request handed its work to a subrequest: only the subrequest accounts.
    pub answered_by_subrequest: bool,
    /// The gateway answered itself with this status (local endpoint or refusal).
    pub local_status: Option<u16>,
    /// The OpenAI error code of that answer, for the access log's `refusal`.
    pub refusal: Option<&'static str>,
    /// The route pattern of a request the gateway answered after routing (426, caps).
    pub route_label: Option<Arc<str>>,
    pub counted_inflight: bool,
    pub limit: super::rate_limit::LimitCtx,
    pub rewrite: super::rewrite::ResponseRewrite,
    /// Responses API: backend response ids sealed in the answer (`response_ids`). Boxed, as
    /// other rarely used parts: Pingora moves the context with its request future.
    pub response_ids: Option<Box<super::response_ids::IdRewrite>>,
    /// Long-lived connections: MCP endpoint rewriting, concurrency slots.
    pub streams: super::long_lived::StreamState,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            started: Instant::now(),
            request_id: String::new(),
            routed: None,
            upstream: UpstreamState::default(),
            usage: UsageObserver::default(),
            key_name: None,
            answered_by_subrequest: false,
            local_status: None,
            refusal: None,
            route_label: None,
            counted_inflight: false,
            limit: Default::default(),
            rewrite: Default::default(),
            response_ids: None,
            streams: Default::default(),
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
