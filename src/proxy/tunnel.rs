//! WebSocket (and other `Upgrade`) tunnels, run by the gateway itself rather than Pingora's
//! proxy loop, so that a tunnel can speak on its own: when the gateway drains it closes both
//! sides with 1001 (Going Away) at a frame boundary. Otherwise bytes pass untouched in both
//! directions (text, binary, ping/pong, close codes); each side is read only when the other
//! has taken the previous bytes, so a slow reader slows the sender instead of growing a buffer.
//!
//! The backend is chosen, connected and failed over like any request ([`forward`]); the
//! upgrade request gets the same header rewriting. The tunnel ends when either side closes,
//! or when neither side sent anything for the route's idle timeout.

use super::ctx::{Ctx, Routed};
use super::ws_frames::{close_going_away_to_server, FrameTracker, CLOSE_GOING_AWAY_TO_CLIENT};
use super::{forward, limit, respond, streams};
use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_proxy::Session;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Runs the upgrade request to its end. The response (101 or the backend's refusal, or the
/// gateway's own error) has been written when this returns.
pub async fn run(
    session: &mut Session,
    ctx: &mut Ctx,
    connector: &Connector,
    mut drain: watch::Receiver<bool>,
) -> Result<()> {
    let Some(routed) = ctx.routed.as_ref() else {
        return respond::error(session, &GatewayError::Internal, &ctx.request_id).await;
    };
    let idle = routed.streams.idle(&routed.provider);
    let websocket = is_websocket(session);
    let mut up = match connect(session, ctx, connector).await? {
        Some(up) => up,
        None => return Ok(()),
    };
    let status = match handshake(session, ctx, &mut up).await {
        Ok(status) => status,
        Err(e) => return answer_failure(session, ctx, &e).await,
    };
    if status != 101 || !up.was_upgraded() {
        return relay_refusal(session, &mut up).await;
    }
    up.maybe_upgrade_body_writer();
    session.set_read_timeout(Some(idle));
    let mut tunnel = Tunnel { websocket, ..Default::default() };
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
async fn connect(session: &mut Session, ctx: &mut Ctx, connector: &Connector) -> Result<Option<Upstream>> {
    loop {
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        let Some(peer) = forward::peer(routed, &mut ctx.upstream) else {
            let e = GatewayError::Unavailable("no healthy backend for this request".into());
            refuse(session, ctx, &e).await?;
            return Ok(None);
        };
        match connector.get_http_session(&*peer).await {
            Ok((up, _reused)) => return Ok(Some(up)),
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

/// Sends the rewritten upgrade request and passes the backend's answer header to the client.
async fn handshake(session: &mut Session, ctx: &mut Ctx, up: &mut Upstream) -> Result<u16> {
    let Some(routed) = ctx.routed.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no route decided");
    };
    let mut req = session.req_header().clone();
    rewrite(&mut req, routed)?;
    up.write_request_header(Box::new(req)).await?;
    up.read_response().await?;
    let Some(resp) = up.resp_header() else {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header from the upstream");
    };
    let status = resp.status.as_u16();
    ctx.upstream.header_at = Some(Instant::now());
    forward::responded(routed, &ctx.upstream, status);
    let mut resp = resp.clone();
    super::response_headers(&mut resp, ctx)?;
    if status != 101 {
        // A refused upgrade: the connection ends with the backend's answer.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    Ok(status)
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

/// The backend answered the upgrade with something else (401, 404, …): pass its body on.
async fn relay_refusal(session: &mut Session, up: &mut Upstream) -> Result<()> {
    while let Some(chunk) = up.read_body_bytes().await? {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await?;
    Ok(())
}

/// Per-direction state of an open tunnel.
#[derive(Default)]
struct Tunnel {
    websocket: bool,
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
    /// The close handshake took too long.
    Linger,
}

/// How long a draining tunnel waits for both sides to answer its close frames.
const LINGER: Duration = Duration::from_secs(1);

impl Tunnel {
    /// Relays until either side closes, the tunnel idles out, or a drain completes. Errors
    /// on either side end the tunnel; they are routine here (the response is long written).
    async fn relay(
        &mut self,
        session: &mut Session,
        up: &mut Upstream,
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
        up: &mut Upstream,
        drain: &mut watch::Receiver<bool>,
        mut draining: bool,
    ) -> Result<()> {
        let mut watch_drain = !draining;
        let mut linger = None;
        if draining {
            self.start_drain(session, up).await?;
            linger = Some(tokio::time::Instant::now() + LINGER);
        }
        loop {
            // Each side's read times out after the route's idle timeout; both reads start
            // afresh after every event, so the tunnel idles out only when both are silent.
            let event = tokio::select! {
                r = session.downstream_session.read_request_body() => Event::FromClient(r?),
                r = up.read_body_bytes() => Event::FromBackend(r?),
                r = drain.changed(), if watch_drain => match r {
                    Ok(()) => Event::Drain,
                    Err(_) => { watch_drain = false; continue; }
                },
                _ = tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now)), if linger.is_some() => Event::Linger,
            };
            match event {
                Event::FromClient(None) | Event::FromBackend(None) | Event::Linger => return Ok(()),
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
                        up.write_body(&data).await?;
                    }
                    self.settle(session, up).await?;
                }
                Event::FromBackend(Some(data)) => {
                    let forward = !draining || self.owe_client;
                    self.down.feed(&data);
                    if forward {
                        session.write_response_body(Some(data), false).await?;
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
    async fn start_drain(&mut self, session: &mut Session, up: &mut Upstream) -> Result<()> {
        if !self.websocket {
            return Error::e_explain(ErrorType::ConnectionClosed, "gateway shutting down");
        }
        self.owe_client = !self.down.close_seen();
        self.owe_backend = !self.up.close_seen();
        self.settle(session, up).await
    }

    /// Sends each owed close frame as soon as its direction is at a frame boundary. (The
    /// trackers are not fed the gateway's own frames: they record what each side sent.)
    async fn settle(&mut self, session: &mut Session, up: &mut Upstream) -> Result<()> {
        if self.owe_client && self.down.at_boundary() {
            self.owe_client = false;
            session.write_response_body(Some(Bytes::from_static(&CLOSE_GOING_AWAY_TO_CLIENT)), false).await?;
        }
        if self.owe_backend && self.up.at_boundary() {
            self.owe_backend = false;
            up.write_body(&close_going_away_to_server(rand::random())).await?;
        }
        Ok(())
    }
}
