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
//! 1. Pingora's proxy loop (`ProxyHttp` hooks in `proxy/mod.rs`): most requests, bodies of
//!    every accepted size too (Pingora's retry buffer, a fixed 64 KiB in 0.9.1, is sized to
//!    `server.max_body` by vendor/patches/0002; it once took a subrequest pipe).
//! 2. The model list (`proxy/models_list.rs`), a subrequest that runs path 1 again: the proxy
//!    loop writes the answer header downstream before any body filter sees the body, so a
//!    list that turns out unreadable could only be cut off, not refused. A hook that holds the
//!    header until the body is in would remove it.
//! 3. The heartbeat relay (`proxy/heartbeat.rs`): the proxy loop calls body filters only when
//!    bytes arrive and has no idle timer hook, so it cannot write a keepalive while the backend
//!    is silent. Such a hook would remove it.
//! 4. The WebSocket tunnel (`proxy/tunnel/`): after a 101 the proxy loop only passes bytes
//!    through the body filters and offers no way to add bytes of the gateway's own (the 1001
//!    close frames on drain, the pings of `routes[].ping`) while both sides are silent. Such a
//!    hook would remove it.
//!
//! Paths 3 and 4 use [`h1_request`], [`write_body`], [`connect::connect`], [`answer_failure`]
//! and [`refuse`].

pub mod answer;
pub mod connect;
pub mod failure;
pub mod pool;
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
