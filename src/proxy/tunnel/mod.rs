//! WebSocket (and other `Upgrade`) tunnels, run by the gateway itself rather than Pingora's
//! proxy loop, so that a tunnel can speak on its own: when the gateway drains it closes both
//! sides with 1001 (Going Away) at a frame boundary. Otherwise bytes pass untouched in both
//! directions (text, binary, ping/pong, close codes); each side is read only when the other
//! has taken the previous bytes, so a slow reader slows the sender instead of growing a buffer.
//!
//! The backend is chosen, connected and failed over like any request ([`forward`]); the
//! upgrade request gets the same header rewriting. The tunnel ends when either side closes,
//! or when neither side sent anything for the route's idle timeout.

mod backend;

use super::ctx::{Ctx, Routed};
use super::ws_frames::{close_going_away_to_server, FrameTracker, CLOSE_GOING_AWAY_TO_CLIENT};
use super::{forward, limit, respond, streams};
use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use backend::Backend;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::connectors::TransportConnector;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::{Duration, Instant};
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
        return respond::error(session, &GatewayError::Internal, &ctx.request_id).await;
    };
    let idle = routed.streams.idle(&routed.provider);
    let timeouts = routed.provider.timeouts.clone();
    let websocket = is_websocket(session);
    // Boxed: the connect future (TLS included) is large and needed only until connected.
    let mut up = match Box::pin(connect(session, ctx, connector)).await? {
        Some(stream) => Backend::new(stream, timeouts.write),
        None => return Ok(()),
    };
    let resp = match Box::pin(handshake(session, ctx, &mut up, timeouts.read)).await {
        Ok(resp) => resp,
        Err(e) => return answer_failure(session, ctx, &e).await,
    };
    if resp.status.as_u16() != 101 {
        return relay_refusal(session, ctx, &mut up, resp, timeouts.read).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    // The tunnel's own idle timer governs reads from here on.
    session.set_read_timeout(None);
    let mut tunnel = Tunnel { websocket, idle, ..Default::default() };
    let draining = *drain.borrow();
    tunnel.relay(session, &mut up, &mut drain, draining).await
}

fn is_websocket(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Picks a backend and connects, moving on to the next backend when a connect fails (nothing
/// was sent yet). `None` when the client has been answered with an error.
async fn connect(
    session: &mut Session,
    ctx: &mut Ctx,
    connector: &TransportConnector,
) -> Result<Option<pingora_core::protocols::Stream>> {
    loop {
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        let Some(peer) = forward::peer(routed, &mut ctx.upstream) else {
            let e = GatewayError::Unavailable("no healthy backend for this request".into());
            refuse(session, ctx, &e).await?;
            return Ok(None);
        };
        match connector.new_stream(&*peer).await {
            Ok(stream) => return Ok(Some(stream)),
            Err(e) => {
                if let Some(m) = metrics() {
                    m.upstream_errors.with_label_values(&[&routed.provider.name, "connect"]).inc();
                }
                if forward::connect_failed(routed, &ctx.upstream) {
                    continue;
                }
                let err = match e.etype() {
                    ErrorType::ConnectTimedout => {
                        GatewayError::GatewayTimeout("timed out connecting to the upstream".into())
                    }
                    t => GatewayError::BadGateway(format!("upstream unreachable or failed ({})", t.as_str())),
                };
                refuse(session, ctx, &err).await?;
                return Ok(None);
            }
        }
    }
}

async fn refuse(session: &mut Session, ctx: &mut Ctx, e: &GatewayError) -> Result<()> {
    ctx.local_status = Some(e.status());
    session.set_keepalive(None);
    let extra = limit::headers(ctx);
    respond::error_with(session, e, &ctx.request_id, extra).await
}

/// Sends the rewritten upgrade request; returns the backend's answer header as the client
/// will see it.
async fn handshake(session: &mut Session, ctx: &mut Ctx, up: &mut Backend, within: Duration) -> Result<ResponseHeader> {
    let Some(routed) = ctx.routed.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no route decided");
    };
    let mut req = session.req_header().clone();
    rewrite(&mut req, routed)?;
    up.send_request(&req).await?;
    let mut resp = up.read_response(within).await?;
    ctx.upstream.header_at = Some(Instant::now());
    forward::responded(routed, &ctx.upstream, resp.status.as_u16());
    super::response_headers(&mut resp, ctx)?;
    Ok(resp)
}

fn rewrite(req: &mut pingora_http::RequestHeader, routed: &Routed) -> Result<()> {
    forward::rewrite_request(req, routed)?;
    streams::upstream_request(req, routed)
}

/// The upgrade request failed after connecting (reset, timeout, malformed answer).
async fn answer_failure(session: &mut Session, ctx: &mut Ctx, e: &Error) -> Result<()> {
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
        Err(e) => return answer_failure(session, ctx, &e).await,
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Per-direction state of an open tunnel.
#[derive(Default)]
struct Tunnel {
    websocket: bool,
    /// Neither side sent anything for this long: the tunnel ends.
    idle: Duration,
    /// Client to backend, and backend to client.
    up: FrameTracker,
    down: FrameTracker,
    /// Close frames the gateway still owes each side while draining.
    owe_client: bool,
    owe_backend: bool,
}

/// What woke the relay.
enum Event {
    FromClient(Option<Bytes>),
    FromBackend(Option<Bytes>),
    Drain,
    /// The close handshake took too long, or the tunnel idled out.
    Timeout,
}

/// How long a draining tunnel waits for both sides to answer its close frames.
const LINGER: Duration = Duration::from_secs(1);

impl Tunnel {
    /// Relays until either side closes, the tunnel idles out, or a drain completes. Errors
    /// on either side end the tunnel; they are routine here (the response is long written).
    async fn relay(
        &mut self,
        session: &mut Session,
        up: &mut Backend,
        drain: &mut watch::Receiver<bool>,
        draining: bool,
    ) -> Result<()> {
        let end = self.pump(session, up, drain, draining).await;
        if let Err(e) = &end {
            log::debug!("tunnel ended: {e}");
        }
        let _ = session.write_response_body(None, true).await;
        Ok(())
    }

    async fn pump(
        &mut self,
        session: &mut Session,
        up: &mut Backend,
        drain: &mut watch::Receiver<bool>,
        mut draining: bool,
    ) -> Result<()> {
        let mut watch_drain = !draining;
        let mut linger = None;
        if draining {
            self.start_drain(session, up).await?;
            linger = Some(tokio::time::Instant::now() + LINGER);
        }
        let client_write = self.idle;
        loop {
            let deadline = linger.unwrap_or_else(|| tokio::time::Instant::now() + self.idle);
            let event = tokio::select! {
                r = session.downstream_session.read_request_body() => Event::FromClient(r?),
                r = up.read() => Event::FromBackend(r?),
                r = drain.changed(), if watch_drain => match r {
                    Ok(()) => Event::Drain,
                    Err(_) => { watch_drain = false; continue; }
                },
                _ = tokio::time::sleep_until(deadline) => Event::Timeout,
            };
            match event {
                Event::FromClient(None) | Event::FromBackend(None) | Event::Timeout => return Ok(()),
                Event::Drain => {
                    watch_drain = false;
                    draining = true;
                    self.start_drain(session, up).await?;
                    linger = Some(tokio::time::Instant::now() + LINGER);
                }
                Event::FromClient(Some(data)) => {
                    // Once the gateway has closed towards the backend, what the client sends
                    // (its close reply included) is for the gateway, not the backend.
                    let forward = !draining || self.owe_backend;
                    self.up.feed(&data);
                    if forward {
                        up.write(&data).await?;
                    }
                    self.settle(session, up).await?;
                }
                Event::FromBackend(Some(data)) => {
                    let forward = !draining || self.owe_client;
                    self.down.feed(&data);
                    if forward {
                        to_client(session, data, client_write).await?;
                    }
                    self.settle(session, up).await?;
                }
            }
            if draining && !self.owe_client && !self.owe_backend && self.up.close_seen() && self.down.close_seen() {
                return Ok(()); // both sides answered the close handshake
            }
        }
    }

    /// The gateway is stopping: owe both sides a close frame (plain tunnels just end).
    async fn start_drain(&mut self, session: &mut Session, up: &mut Backend) -> Result<()> {
        if !self.websocket {
            return Error::e_explain(ErrorType::ConnectionClosed, "gateway shutting down");
        }
        self.owe_client = !self.down.close_seen();
        self.owe_backend = !self.up.close_seen();
        self.settle(session, up).await
    }

    /// Sends each owed close frame as soon as its direction is at a frame boundary. (The
    /// trackers are not fed the gateway's own frames: they record what each side sent.)
    async fn settle(&mut self, session: &mut Session, up: &mut Backend) -> Result<()> {
        if self.owe_client && self.down.at_boundary() {
            self.owe_client = false;
            to_client(session, Bytes::from_static(&CLOSE_GOING_AWAY_TO_CLIENT), self.idle).await?;
        }
        if self.owe_backend && self.up.at_boundary() {
            self.owe_backend = false;
            up.write(&close_going_away_to_server(rand::random())).await?;
        }
        Ok(())
    }
}

/// Writes to the client, giving up on one that takes no bytes for `within`.
async fn to_client(session: &mut Session, data: Bytes, within: Duration) -> Result<()> {
    match tokio::time::timeout(within, session.write_response_body(Some(data), false)).await {
        Ok(r) => r,
        Err(_) => Error::e_explain(ErrorType::WriteTimedout, "client took no bytes"),
    }
}
