//! Requests the gateway carries to the backend itself, outside Pingora's proxy loop (WebSocket
//! tunnels and event streams with keepalives): choosing and connecting the backend with the
//! same failover as any request, the same upstream request header, and the same answers when
//! the backend cannot be reached.

use super::ctx::{Ctx, Routed};
use super::{forward, limit, respond, rewrite, streams};
use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::future::Future;

/// Backend connections for these requests.
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

/// The request header as the backend gets it: provider path, key and Host, forwarding
/// headers, the rewritten body's length, MCP session and Origin.
pub fn upstream_request(req: &mut RequestHeader, routed: &Routed) -> Result<()> {
    forward::rewrite_request(req, routed)?;
    if let Some(len) = routed.body_len {
        rewrite::set_body_length(req, len)?;
    }
    streams::upstream_request(req, routed)
}

/// The client's request as an HTTP/1.1 request to the backend (it may have come over HTTP/2).
pub fn h1_request(session: &Session, routed: &Routed) -> Result<RequestHeader> {
    let mut req = session.req_header().clone();
    req.set_version(http::Version::HTTP_11);
    upstream_request(&mut req, routed)?;
    Ok(req)
}

/// Picks a backend and connects with `open`, moving on to the next backend when a connect
/// fails (nothing was sent yet). `None` when the client has been answered with an error.
pub async fn connect<T, F, Fut>(session: &mut Session, ctx: &mut Ctx, open: F) -> Result<Option<(T, Box<HttpPeer>)>>
where
    F: Fn(Box<HttpPeer>) -> Fut,
    Fut: Future<Output = (Result<T>, Box<HttpPeer>)>,
{
    loop {
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        let Some(peer) = forward::peer(routed, &mut ctx.upstream) else {
            let e = GatewayError::Unavailable("no healthy backend for this request".into());
            refuse(session, ctx, &e).await?;
            return Ok(None);
        };
        let (opened, peer) = open(peer).await;
        let e = match opened {
            Ok(conn) => return Ok(Some((conn, peer))),
            Err(e) => e,
        };
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        if let Some(c) = routed.provider_metrics().and_then(|p| p.connect_errors()) {
            c.inc();
        }
        if forward::connect_failed(routed, &ctx.upstream) {
            continue;
        }
        let err = match e.etype() {
            ErrorType::ConnectTimedout => GatewayError::GatewayTimeout("timed out connecting to the upstream".into()),
            t => GatewayError::BadGateway(format!("upstream unreachable or failed ({})", t.as_str())),
        };
        refuse(session, ctx, &err).await?;
        return Ok(None);
    }
}

/// Answers with the gateway's own error and closes the connection.
pub async fn refuse(session: &mut Session, ctx: &mut Ctx, e: &GatewayError) -> Result<()> {
    ctx.local_status = Some(e.status());
    session.set_keepalive(None);
    let extra = limit::headers(ctx);
    respond::error_with(session, e, &ctx.request_id, extra).await
}

/// The request failed after connecting, before an answer (reset, timeout, malformed answer):
/// counts against the backend and answers 502 or 504 unless a response already started.
pub async fn answer_failure(session: &mut Session, ctx: &mut Ctx, e: &Error) -> Result<()> {
    if let Some(r) = &ctx.routed {
        forward::failed_before_header(r, &ctx.upstream, e);
        if let Some(m) = metrics() {
            m.upstream_errors.with_label_values(&[&r.provider.name, e.etype().as_str()]).inc();
        }
    }
    if session.response_written().is_some() {
        return Ok(()); // the client went away while the answer was being written
    }
    let err = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            GatewayError::GatewayTimeout("the upstream did not answer in time".into())
        }
        t => GatewayError::BadGateway(format!("upstream failed ({})", t.as_str())),
    };
    refuse(session, ctx, &err).await
}
