//! Long-lived connections: what a route allows and needs for WebSocket tunnels, event streams
//! and MCP sessions, decided once in `admit` and carried in [`Routed`]; the per-request state
//! (endpoint rewriter, concurrency slots) lives in [`StreamState`] in the context.

use super::ctx::Routed;
use super::mcp_session as session;
use super::{long_lived_caps as limits, websocket};
use crate::fleet::Provider;
use crate::mcp::endpoint::EndpointRewriter;
use crate::routes::{Route, RouteKind, RouteOpts};
use pingora::prelude::*;
use pingora_proxy::Session;
use std::time::Duration;

/// Decided at routing: the route's stream settings and what this request is.
#[derive(Debug, Clone, Default)]
pub struct RouteStreams {
    pub opts: std::sync::Arc<RouteOpts>,
    /// The client-side path prefix the route replaces by the provider's base path (for
    /// mapping upstream URLs back into the gateway's space).
    pub client_prefix: String,
    /// `Upgrade: websocket` was asked for (and allowed).
    pub upgrade: bool,
    /// A long-lived response is expected: `Accept: text/event-stream` on a GET, or
    /// `"stream": true` in the body.
    pub event_stream: bool,
    /// The request is a GET (an MCP GET without a session id opens a legacy SSE stream).
    pub get: bool,
    /// The request is a DELETE (an MCP DELETE with a session id ends the session).
    pub delete: bool,
    /// The first request of a new MCP session (no sealed id) or Responses chain (no
    /// `previous_response_id`): placed on the least loaded backend, not by hash key.
    pub new_session: bool,
    /// MCP: the backend this request must reach, and what it knows the session as.
    pub pin: Option<crate::mcp::seal::Pinned>,
}

impl RouteStreams {
    pub fn new(route: &Route, provider: &Provider) -> Self {
        let client_prefix = route.strip_for(&provider.base_path).unwrap_or("").to_string();
        // Every field named: `..Default::default()` would build (and drop) a default `opts`.
        RouteStreams {
            opts: route.opts.clone(),
            client_prefix,
            upgrade: false,
            event_stream: false,
            get: false,
            delete: false,
            new_session: false,
            pin: None,
        }
    }

    /// Per-read idle timeout for tunnels and streams on this route.
    pub fn idle(&self, provider: &Provider) -> Duration {
        self.opts.idle_timeout.unwrap_or(provider.timeouts.read)
    }
}

/// Per-request state of long-lived connections.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Legacy MCP: rewrites the first `endpoint` event of a `GET …/sse` stream.
    pub endpoint: Option<Box<EndpointRewriter>>,
    /// Concurrency slots held for the life of the stream or tunnel.
    pub slots: Vec<limits::Slot>,
    /// A legacy MCP session (its `GET …/sse` stream) counted on its backend while it lasts.
    pub session: Option<SessionCount>,
}

/// One open MCP session counted on its backend (`Backend::sessions`) until dropped.
#[derive(Debug)]
pub struct SessionCount(std::sync::Arc<crate::fleet::Backend>);

impl SessionCount {
    pub fn open(b: std::sync::Arc<crate::fleet::Backend>) -> Self {
        session::opened(&b);
        SessionCount(b)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        session::closed(&self.0);
    }
}

/// What `admit` decided for a long-lived request.
pub enum Admit {
    /// Proxy it the ordinary way.
    Continue,
    /// Run it through the heartbeat pipe.
    Heartbeat(Duration),
    /// An allowed upgrade: run the gateway's own tunnel.
    Tunnel,
    /// Answered already with this status.
    Answered(u16),
}

/// WebSocket permission, MCP session unsealing and concurrency caps, after routing.
pub async fn admit(
    session: &mut Session,
    routed: &mut Routed,
    state: &mut StreamState,
    request_id: &str,
    present: &super::fields::Present,
) -> Result<Admit> {
    if present.upgrade {
        websocket::decline_other_upgrades(session.req_header_mut());
    }
    let req = session.req_header();
    let upgrade = super::fields::is_upgrade_req(session, present);
    let accepts_sse = present.accept
        && req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    let event_stream = !upgrade && (routed.stream || (req.method == http::Method::GET && accepts_sse));
    routed.streams.upgrade = upgrade;
    routed.streams.event_stream = event_stream;
    routed.streams.get = req.method == http::Method::GET;
    routed.streams.delete = req.method == http::Method::DELETE;
    if upgrade && !routed.streams.opts.websocket {
        return Ok(Admit::Answered(websocket::refuse_upgrade(session, request_id).await?));
    }
    if routed.streams.opts.kind == RouteKind::Mcp {
        if let Some(status) = session::admit(session, routed, request_id).await? {
            return Ok(Admit::Answered(status));
        }
        routed.streams.new_session = routed.streams.pin.is_none();
    }
    if upgrade || event_stream {
        if let Some(status) = limits::acquire(session, routed, state, request_id).await? {
            return Ok(Admit::Answered(status));
        }
    }
    if upgrade {
        return Ok(Admit::Tunnel);
    }
    // `server.client_read_timeout` for everything that is not a tunnel.
    session.set_read_timeout(Some(routed.runtime.server.client_read_timeout));
    match routed.streams.opts.heartbeat {
        Some(every) if event_stream && session.subrequest_ctx.is_none() => Ok(Admit::Heartbeat(every)),
        _ => Ok(Admit::Continue),
    }
}

/// The backend named by an MCP seal, when this request is pinned: `Some(None)` when it was
/// already tried (no other backend may take it).
pub fn pinned_backend(
    routed: &Routed,
    tried: &[usize],
) -> Option<Option<(usize, std::sync::Arc<crate::fleet::Backend>)>> {
    let pin = routed.streams.pin.as_ref()?;
    Some(session::find_backend(routed, pin.backend).filter(|(i, _)| !tried.contains(i)))
}

/// Upstream request header: MCP session id and Origin.
pub fn upstream_request(req: &mut pingora_http::RequestHeader, routed: &Routed) -> Result<()> {
    if routed.streams.opts.kind == RouteKind::Mcp {
        session::rewrite_request(req, routed)?;
    }
    Ok(())
}

/// Upstream response header: seal a minted MCP session id; arm the legacy endpoint rewriter.
/// (After the usage observer has seen the header: it knows whether the body is SSE.)
pub fn upstream_response(resp: &mut pingora_http::ResponseHeader, ctx: &mut super::ctx::Ctx) -> Result<()> {
    let Some(routed) = ctx.routed.as_ref() else { return Ok(()) };
    if routed.streams.opts.kind != RouteKind::Mcp {
        return Ok(());
    }
    session::rewrite_response(resp, routed, ctx.upstream.backend.as_ref())?;
    if routed.streams.delete && resp.status.is_success() {
        if let Some(b) = routed.streams.pin.as_ref().and_then(|p| session::find_backend(routed, p.backend)) {
            session::closed(&b.1);
        }
    }
    let is_sse = ctx.usage.kind() == super::usage::BodyKind::Sse;
    // A GET stream opened without a session id is the legacy transport's `GET …/sse`.
    if is_sse && routed.streams.pin.is_none() && routed.streams.get {
        if let (Some(sealer), Some(b)) = (routed.runtime.mcp.as_ref(), ctx.upstream.backend.as_ref()) {
            ctx.streams.endpoint = Some(Box::new(EndpointRewriter::new(
                sealer.clone(),
                &routed.provider.name,
                b.addr,
                &routed.key.name,
                &routed.provider.base_path,
                &routed.streams.client_prefix,
            )));
            resp.remove_header(&http::header::CONTENT_LENGTH);
            ctx.streams.session = Some(SessionCount::open(b.clone()));
        }
    }
    Ok(())
}

/// Response body: the legacy endpoint rewrite (everything else passes untouched).
pub fn response_body(body: &mut Option<bytes::Bytes>, end: bool, state: &mut StreamState) {
    let Some(rw) = state.endpoint.as_mut() else { return };
    let chunk = body.take().unwrap_or_default();
    *body = Some(rw.feed(chunk, end));
}
