//! WebSocket tunnels, run by the gateway itself rather than Pingora's proxy loop, so that a
//! tunnel can speak on its own: when the gateway drains it closes both sides with 1001
//! (Going Away) at a frame boundary. Otherwise bytes pass untouched in both
//! directions (text, binary, ping/pong, close codes); each side is read only when the other
//! has taken the previous bytes, so a slow reader slows the sender instead of growing a buffer.
//!
//! The backend is chosen, connected and failed over like any request ([`super::upstream`]); the
//! upgrade request gets the same header rewriting. The tunnel ends when either side closes,
//! or when neither side sent anything for the route's idle timeout.

mod backend;
mod relay;

use super::ctx::Ctx;
use super::upstream as direct;
use crate::error::GatewayError;
use backend::Backend;
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
        return direct::refuse(session, ctx, &GatewayError::Internal).await;
    };
    let idle = routed.streams.idle(&routed.provider);
    let timeouts = routed.provider.timeouts.clone();
    let open = |peer: Box<HttpPeer>| async move { (connector.new_stream(&*peer).await, peer) };
    // Boxed: the connect future (TLS included) is large and needed only until connected.
    let mut up = match Box::pin(direct::connect(session, ctx, open)).await? {
        Some((stream, _)) => Backend::new(stream, timeouts.write),
        None => return Ok(()),
    };
    let resp = match Box::pin(handshake(session, ctx, &mut up, timeouts.read)).await {
        Ok(resp) => resp,
        Err(e) => return direct::answer_failure(session, ctx, &e).await,
    };
    if resp.status.as_u16() != 101 {
        return relay_refusal(session, ctx, &mut up, resp, timeouts.read).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    // The tunnel's own idle timer governs reads from here on.
    session.set_read_timeout(None);
    Tunnel::new(idle).relay(session, &mut up, &mut drain).await
}

/// Sends the rewritten upgrade request; returns the backend's answer header as the client
/// will see it.
async fn handshake(session: &mut Session, ctx: &mut Ctx, up: &mut Backend, within: Duration) -> Result<ResponseHeader> {
    let Some(routed) = ctx.routed.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no route decided");
    };
    let req = direct::h1_request(session, routed)?;
    up.send_request(&req).await?;
    let mut resp = up.read_response(within).await?;
    super::upstream::answer::answered(&mut resp, ctx)?;
    super::response_headers(&mut resp, ctx)?;
    Ok(resp)
}

/// The backend answered the upgrade with something else (401, 404, …): pass it on, body
/// included, and close the connection.
async fn relay_refusal(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut Backend,
    mut resp: ResponseHeader,
    within: Duration,
) -> Result<()> {
    let body = match up.read_refusal_body(&resp, within).await {
        Ok(body) => body,
        Err(e) => return direct::answer_failure(session, ctx, &e).await,
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
