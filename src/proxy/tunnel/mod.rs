//! WebSocket tunnels, run by the gateway itself rather than Pingora's proxy loop, so that a
//! tunnel can speak on its own: when the gateway drains it closes both sides with 1001
//! (Going Away) at a frame boundary. Otherwise bytes pass untouched in both
//! directions (text, binary, ping/pong, close codes); each side is read only when the other
//! has taken the previous bytes, so a slow reader slows the sender instead of growing a buffer,
//! and neither direction waits on the other ([`relay`]). The upgrade itself goes through
//! Pingora's HTTP/1 client session; raw bytes flow only after a 101 ([`backend`]).
//!
//! The backend is chosen, connected and failed over like any request ([`super::upstream`]); the
//! upgrade request gets the same header rewriting. The tunnel ends when either side closes,
//! or when neither side sent anything for the route's idle timeout.

mod backend;
mod keepalive;
mod relay;

use super::ctx::Ctx;
use super::upstream;
use crate::error::GatewayError;
use backend::Upgrade;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_core::connectors::TransportConnector;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use relay::Tunnel;
use std::time::Duration;
use tokio::sync::watch;

/// Runs the upgrade request to its end. The response (101 or the backend's refusal, or the
/// gateway's own error) has been written when this returns.
pub async fn run(
    session: &mut Session,
    ctx: &mut Ctx,
    connector: &TransportConnector,
    mut drain: watch::Receiver<bool>,
) -> Result<()> {
    let Some(routed) = ctx.routed.as_ref() else {
        return upstream::refuse(session, ctx, &GatewayError::Internal).await;
    };
    let idle = routed.streams.idle(&routed.provider);
    let ping = routed.streams.opts.ping;
    let timeouts = routed.provider.timeouts.clone();
    let open = |peer: Box<HttpPeer>| async move { (connector.new_stream(&*peer).await, peer) };
    // Boxed: the connect future (TLS included) is large and needed only until connected.
    let mut up = match Box::pin(upstream::connect(session, ctx, open)).await? {
        Some((stream, peer)) => Upgrade::new(stream, &peer, timeouts.read, timeouts.write),
        None => return Ok(()),
    };
    let resp = match Box::pin(handshake(session, ctx, &mut up, timeouts.read)).await {
        Ok(resp) => resp,
        Err(e) => return upstream::answer_failure(session, ctx, &e).await,
    };
    if resp.status.as_u16() != 101 {
        return relay_refusal(session, ctx, &mut up, resp, timeouts.read).await;
    }
    let mut backend = match up.into_pipe(timeouts.write).await {
        Ok(backend) => backend,
        Err(e) => return upstream::answer_failure(session, ctx, &e).await,
    };
    session.write_response_header(resp, false).await?;
    if !session.was_upgraded() {
        // A 101 without `Upgrade`: the client does not switch protocols either.
        session.set_keepalive(None);
        return Ok(());
    }
    // The tunnel's own idle timer governs reads from here on; a client that takes no bytes
    // for as long fails the write. The relay writes through the cancel-safe task API.
    session.set_read_timeout(None);
    session.downstream_session.set_write_timeout(Some(idle));
    session.set_proxy_tasks_enabled(true);
    if !session.downstream_session.supports_proxy_task_api() {
        // Only HTTP/1 upgrades reach here; any other session ends at once.
        return Ok(());
    }
    Tunnel::new(idle, ping).relay(session, &mut backend, &mut drain).await
}

/// Sends the rewritten upgrade request; returns the backend's answer header as the client
/// will see it.
async fn handshake(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut Upgrade,
    within: Duration,
) -> Result<Box<ResponseHeader>> {
    let Some(routed) = ctx.routed.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no route decided");
    };
    let req = upstream::h1_request(session, routed)?;
    let mut resp = match tokio::time::timeout(within, up.exchange(req)).await {
        Ok(resp) => resp?,
        Err(_) => return Err(Error::explain(ErrorType::ReadTimedout, "waiting for the response header").into_up()),
    };
    super::upstream::answer::answered(&mut resp, ctx)?;
    super::response_headers(&mut resp, ctx)?;
    Ok(resp)
}

/// The backend answered the upgrade with something else (401, 404, …): pass it on, body
/// included, and close the connection.
async fn relay_refusal(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut Upgrade,
    mut resp: Box<ResponseHeader>,
    within: Duration,
) -> Result<()> {
    let body = match tokio::time::timeout(within, up.refusal_body()).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return upstream::answer_failure(session, ctx, &e).await,
        Err(_) => {
            let e = Error::explain(ErrorType::ReadTimedout, "reading the response body").into_up();
            return upstream::answer_failure(session, ctx, &e).await;
        }
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.set_keepalive(None);
    session.write_response_header(resp, false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
