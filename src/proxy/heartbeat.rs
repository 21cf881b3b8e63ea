//! Keepalive comments for event streams. Pingora calls body filters only when bytes arrive, so
//! nothing in its proxy loop can speak while the upstream is silent. On a route with
//! `heartbeat` the gateway therefore carries the request to the backend itself ([`super::upstream`]:
//! the same backend choice, failover, pinning and header rewriting as any request) and relays
//! the answer through the same body filters (usage, rewrites, MCP endpoint): when nothing
//! arrived for `heartbeat`, it writes `: keepalive`, only at an event boundary, never inside
//! an event. The backend is read only after the client took the previous bytes, so a slow
//! client slows the backend instead of growing a buffer.
//!
//! A Pingora change would remove this path and its connection pool: a timer arm in the
//! response loops of vendor/pingora-proxy/src/proxy_h1.rs and proxy_h2.rs calling a new
//! `ProxyHttp` hook that may return bytes after a silence. The gateway does not carry it: it
//! changes the core proxy loop of both protocols.
//!
//! The exchange is Pingora's HTTP/1 client session: nothing is parsed here. The request body
//! goes out whole before the answer is read; once the answer flows, nothing else is pending
//! (the client is only watched for departure), so no direction waits on another there. A
//! backend that answers before it has read a body larger than the socket buffers is heard
//! only after the upload (or its write timeout): the session's `write_body` is not
//! cancel-safe, so reading the answer during an upload needs the same one-write-at-a-time
//! loop as Pingora's `proxy_handle_upstream` (proxy_h1.rs).

use super::ctx::Ctx;
use super::upstream::{self, Connectors};
use super::usage::BodyKind;
use crate::error::GatewayError;
use crate::sse::Boundary;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::Duration;

/// The comment line sent on silence; SSE parsers ignore lines starting with ':'.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Carries the request to the backend and relays the answer, adding keepalives on silence.
/// `body`: the request body the gateway already read (`None`: stream the client's, if any).
pub async fn run(
    session: &mut Session,
    ctx: &mut Ctx,
    connectors: &Connectors,
    body: Option<Bytes>,
    every: Duration,
) -> Result<()> {
    let Some(routed) = ctx.routed.as_ref() else {
        return upstream::refuse(session, ctx, &GatewayError::Internal).await;
    };
    let timeouts = routed.provider.timeouts.clone();
    let idle = routed.streams.idle(&routed.provider);
    let req = upstream::h1_request(session, routed)?;
    // Boxed: the exchange's state is needed only until the answer header is in.
    let exchanged = Box::pin(exchange(session, ctx, connectors, req, body, idle, &timeouts)).await?;
    let Some((mut up, peer, mut resp)) = exchanged else {
        return Ok(());
    };
    response_header(&mut resp, ctx)?;
    let sse = ctx.usage.kind() == BodyKind::Sse;
    session.write_response_header(resp, false).await?;
    relay(session, ctx, &mut up, sse, every).await?;
    if up.is_body_done() {
        // The peer's idle timeout: zero for a pool slot that keeps no idle connection.
        connectors.pooled.release_http_session(up, &*peer, peer.options.idle_timeout.or(Some(timeouts.idle))).await;
    }
    Ok(())
}

/// Sends the request and reads the answer's header; `None` when the client was answered
/// with an error. A pooled connection may have been closed by the backend meanwhile: the
/// request then goes once more on a fresh one, if its body can be sent again.
async fn exchange(
    session: &mut Session,
    ctx: &mut Ctx,
    connectors: &Connectors,
    req: RequestHeader,
    body: Option<Bytes>,
    idle: Duration,
    timeouts: &crate::fleet::Timeouts,
) -> Result<Option<(HttpSession, Box<HttpPeer>, Box<ResponseHeader>)>> {
    let mut fresh = false;
    loop {
        let open = |peer: Box<HttpPeer>| async move {
            let opened = if fresh {
                connectors.fresh.new_stream(&*peer).await.map(|s| (HttpSession::new(s), false))
            } else {
                connectors.pooled.get_http_session(&*peer).await
            };
            (opened, peer)
        };
        let Some(((mut up, reused), peer)) = Box::pin(upstream::connect(session, ctx, open)).await? else {
            return Ok(None);
        };
        // Like proxied requests: the route's idle timeout bounds every read, the first too.
        up.read_timeout = Some(idle);
        up.write_timeout = Some(timeouts.write);
        // The body can go again when the gateway holds it, or when there is none.
        let resendable = body.is_some() || session.is_body_empty();
        let answer = match send(session, &mut up, &req, body.as_ref()).await {
            Ok(()) => up.read_resp_header_parts().await.map_err(|e| e.into_up()),
            Err(e) => Err(e),
        };
        match answer {
            Ok(resp) => return Ok(Some((up, peer, resp))),
            // Closed or reset, not timed out: a stale connection, not a slow backend.
            Err(e) if reused && resendable && stale(&e) => {
                log::debug!("pooled upstream connection failed ({e}); retrying on a fresh one");
                ctx.upstream.tried.pop();
                fresh = true;
            }
            Err(e) => {
                upstream::answer_failure(session, ctx, &e).await?;
                return Ok(None);
            }
        }
    }
}

fn stale(e: &Error) -> bool {
    e.esource() == &ErrorSource::Upstream
        && matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError)
}

/// Writes the request header and body: the bytes the gateway read, or the client's body as
/// it arrives.
async fn send(session: &mut Session, up: &mut HttpSession, req: &RequestHeader, body: Option<&Bytes>) -> Result<()> {
    up.write_request_header(Box::new(req.clone())).await.map_err(|e| e.into_up())?;
    match body {
        Some(read) => upstream::write_body(up, read).await?,
        None => {
            while let Some(chunk) = session.read_request_body().await? {
                upstream::write_body(up, &chunk).await?;
            }
        }
    }
    up.finish_body().await.map_err(|e| e.into_up())?;
    Ok(())
}

/// What Pingora's `upstream_response_filter` and `response_filter` do for proxied requests,
/// and framing for a close-delimited answer.
fn response_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    super::upstream::answer::answered(resp, ctx)?;
    super::response_headers(resp, ctx)?;
    let framed = resp.headers.contains_key(http::header::CONTENT_LENGTH)
        || resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !framed {
        // A close-delimited answer from the backend stays reusable for the client.
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// What woke the relay.
enum Event {
    /// The client closed its connection.
    ClientGone(Box<Error>),
    /// The client sent bytes (a pipelined request): stop watching it.
    ClientSpoke,
    /// Nothing arrived for `every`.
    Silent,
    /// Body bytes from the backend; `None` at the end.
    Body(Option<Bytes>),
}

async fn relay(session: &mut Session, ctx: &mut Ctx, up: &mut HttpSession, sse: bool, every: Duration) -> Result<()> {
    let mut boundary = Boundary::default();
    let mut watch_client = true;
    loop {
        // The client is watched too, so a stream whose client left ends at once instead of
        // at the next heartbeat or upstream byte.
        let event = tokio::select! {
            r = session.downstream_session.read_body_or_idle(true), if watch_client => match r {
                Err(e) => Event::ClientGone(e),
                Ok(_) => Event::ClientSpoke,
            },
            r = tokio::time::timeout(every, up.read_body_bytes()) => match r {
                Err(_) => Event::Silent,
                Ok(body) => Event::Body(body.map_err(|e| e.into_up())?),
            },
        };
        match event {
            Event::ClientGone(e) => return Err(e),
            Event::ClientSpoke => watch_client = false,
            Event::Silent => {
                if sse && boundary.at_boundary() {
                    session.write_response_body(Some(Bytes::from_static(KEEPALIVE)), false).await?;
                    if let Some(m) = crate::observe::metrics::metrics() {
                        m.heartbeats.inc();
                    }
                }
            }
            Event::Body(chunk) => {
                let end = chunk.is_none();
                let mut body = chunk;
                super::filter_body(&mut body, end, ctx);
                if let Some(b) = &body {
                    boundary.feed(b);
                }
                session.write_response_body(body, end).await?;
                if end {
                    return Ok(());
                }
            }
        }
    }
}
