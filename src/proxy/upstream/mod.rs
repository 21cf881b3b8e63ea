//! Everything between "a backend was chosen" and "its answer header is in", for every path
//! that reaches a backend:
//!
//! - [`request`]: the request header the backend gets (HTTP hygiene, the gateway's rewrites,
//!   framing);
//! - [`connect`]: the backend choice, timeouts and TLS of the peer, failover while nothing
//!   was sent;
//! - [`answer`]: the answer header arrived (timing, circuit, plain-bytes check, observers);
//! - [`failure`]: the one mapping of a failure to the client's OpenAI error, and the one
//!   place the circuit and the upstream metrics are told.
//!
//! The paths, each forced by a Pingora 0.9.1 limitation and each calling this module:
//!
//! 1. Pingora's proxy loop (`ProxyHttp` hooks in `proxy/mod.rs`): most requests.
//! 2. The subrequest pipe (`proxy/pipe.rs`): bodies over Pingora's 64 KiB retry buffer; the
//!    subrequest runs the same hooks, so it is path 1 again behind a pipe.
//! 3. The heartbeat relay (`proxy/heartbeat.rs`): Pingora's proxy loop calls body filters only
//!    when bytes arrive, so it cannot write a keepalive while the backend is silent.
//! 4. The WebSocket tunnel (`proxy/tunnel/`): Pingora's proxy loop cannot speak on a tunnel
//!    by itself (close with 1001 on drain).
//!
//! Paths 3 and 4 use [`h1_request`], [`write_body`], [`connect::connect`], [`answer_failure`]
//! and [`refuse`].

pub mod answer;
pub mod connect;
pub mod failure;
pub mod request;

pub use connect::connect;
pub use failure::refuse;
pub use request::{h1_request, write_body};

use crate::proxy::ctx::Ctx;
use pingora::prelude::*;
use pingora_proxy::Session;

/// Backend connections of the relays (paths 3 and 4).
pub struct Connectors {
    /// HTTP/1.1 sessions kept alive between requests (relays).
    pub pooled: pingora_core::connectors::http::v1::Connector,
    /// New connections, never pooled (tunnels, and a relay's retry after a stale one).
    pub fresh: pingora_core::connectors::TransportConnector,
}

impl Connectors {
    pub fn new() -> Self {
        Connectors {
            pooled: pingora_core::connectors::http::v1::Connector::new(None),
            fresh: pingora_core::connectors::TransportConnector::new(None),
        }
    }
}

impl Default for Connectors {
    fn default() -> Self {
        Self::new()
    }
}

/// A relay's request failed after connecting, before an answer (reset, timeout, malformed
/// answer): recorded, and answered (502, 504, …) unless a response already started or the
/// client is gone.
pub async fn answer_failure(session: &mut Session, ctx: &mut Ctx, e: &Error) -> Result<()> {
    failure::answer(session, ctx, e).await.map(|_| ())
}
