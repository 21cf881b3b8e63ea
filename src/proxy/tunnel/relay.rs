//! The open tunnel: bytes both ways until either side closes or both fall silent for the
//! idle timeout; on drain, a 1001 close frame to each side at its next frame boundary.
//!
//! The two directions never wait on each other. One loop polls, together, the write pending
//! towards each side and the read from each side whose previous bytes were taken: a client
//! that stops reading holds up only the backend's bytes to it, never its own to the backend.
//! Each direction carries at most one read at a time, so a slow reader slows its sender
//! instead of growing a buffer.
//!
//! Reading the client and writing to it both take `&mut Session`, so the two cannot be
//! separate futures. Pingora's cancel-safe proxy-task API (`send_downstream_proxy_task`,
//! `write_downstream_proxy_tasks`, which resumes an interrupted write) and its cancel-safe
//! body read let one poll function create, poll and drop both on each wake-up, the way
//! Pingora's own proxy loop polls them in `select!` (vendor/pingora-proxy/src/proxy_h2.rs).

use super::backend::Backend;
use super::keepalive::{Due, Keepalive};
use crate::proxy::ws_frames::{close_going_away_to_server, FrameTracker, CLOSE_GOING_AWAY_TO_CLIENT};
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::protocols::http::HttpTask;
use pingora_proxy::Session;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Per-direction state of an open tunnel.
#[derive(Default)]
pub struct Tunnel {
    /// Neither side sent anything for this long: the tunnel ends.
    idle: Duration,
    /// Client to backend, and backend to client.
    up: FrameTracker,
    down: FrameTracker,
    /// Close frames the gateway still owes each side while draining.
    owe_client: bool,
    owe_backend: bool,
    /// `routes[].ping`: the gateway's pings to the client.
    keepalive: Option<Keepalive>,
}

/// What woke the relay.
enum Event {
    FromClient(Option<Bytes>),
    FromBackend(Option<Bytes>),
    /// A queued write finished.
    Wrote,
    Drain,
    /// The close handshake took too long, or the tunnel idled out.
    Timeout,
}

/// How the pump ended.
enum End {
    /// A side closed, or the close handshake completed: what is queued still goes out.
    Closed,
    /// Idle or linger timeout: nobody is taking bytes.
    TimedOut,
}

/// How long a draining tunnel waits for both sides to answer its close frames.
const LINGER: Duration = Duration::from_secs(1);

impl Tunnel {
    pub fn new(idle: Duration, ping: Option<crate::routes::Ping>) -> Self {
        Tunnel { idle, keepalive: ping.map(Keepalive::new), ..Default::default() }
    }

    /// Relays until either side closes, the tunnel idles out, or a drain completes. Errors
    /// on either side end the tunnel; they are routine here (the response is long written).
    /// The downstream session must have the proxy-task API enabled.
    pub async fn relay(
        &mut self,
        session: &mut Session,
        up: &mut Backend,
        drain: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        match self.pump(session, up, drain).await {
            Ok(End::Closed) => {
                // Bytes read before the close still reach the other side, within the idle
                // timeout; then the client's response ends.
                session.downstream_session.send_downstream_proxy_task(HttpTask::Done);
                let flush = std::future::poll_fn(|cx| poll_flush(cx, session, up));
                match tokio::time::timeout(self.idle, flush).await {
                    Ok(Err(e)) => log::debug!("tunnel ended: {e}"),
                    Err(_) => log::debug!("tunnel ended: a side took no bytes"),
                    Ok(Ok(())) => {}
                }
            }
            Ok(End::TimedOut) => {}
            Err(e) => log::debug!("tunnel ended: {e}"),
        }
        Ok(())
    }

    async fn pump(
        &mut self,
        session: &mut Session,
        up: &mut Backend,
        drain: &mut watch::Receiver<bool>,
    ) -> Result<End> {
        // The drain may have begun while the tunnel was being set up.
        let mut draining = *drain.borrow();
        let mut watch_drain = !draining;
        let mut linger = None;
        if draining {
            self.start_drain(session, up);
            linger = Some(Instant::now() + LINGER);
        }
        let mut last_read = Instant::now();
        let mut backend_write_since: Option<Instant> = None;
        loop {
            if draining && !self.owe_client && !self.owe_backend && self.up.close_seen() && self.down.close_seen() {
                return Ok(End::Closed); // both sides answered the close handshake
            }
            if !draining {
                self.ping_client(session);
            }
            let idle_end = linger.unwrap_or(last_read + self.idle);
            let deadline = match &self.keepalive {
                // A ping waiting for a frame boundary is sent after the backend's next bytes.
                Some(k) if !draining && k.due(Instant::now()) != Due::Ping => idle_end.min(k.deadline()),
                _ => idle_end,
            };
            // A write to the backend that takes too long ends the tunnel (the client's are
            // bounded by the session's write timeout).
            let backend_stuck = backend_write_since.map(|t| t + up.write_timeout);
            let event = tokio::select! {
                r = std::future::poll_fn(|cx| poll_io(cx, session, up)) => r?,
                r = drain.changed(), if watch_drain => match r {
                    Ok(()) => Event::Drain,
                    Err(_) => { watch_drain = false; continue; }
                },
                _ = tokio::time::sleep_until(deadline) => Event::Timeout,
                _ = sleep_until_some(backend_stuck) => {
                    return Err(Error::explain(ErrorType::WriteTimedout, "writing to the backend").into_up());
                }
            };
            match event {
                Event::FromClient(None) | Event::FromBackend(None) => return Ok(End::Closed),
                Event::Timeout if Instant::now() >= idle_end => return Ok(End::TimedOut),
                Event::Timeout => {
                    if self.keepalive.as_ref().is_some_and(|k| k.due(Instant::now()) == Due::Expired) {
                        log::info!("tunnel closed: the client did not answer the gateway's ping");
                        watch_drain = false;
                        draining = true;
                        self.start_drain(session, up);
                        linger = Some(Instant::now() + LINGER);
                    }
                }
                Event::Drain => {
                    watch_drain = false;
                    draining = true;
                    self.start_drain(session, up);
                    linger = Some(Instant::now() + LINGER);
                }
                Event::Wrote => {}
                Event::FromClient(Some(data)) => {
                    // The pongs to the gateway's own pings are not the backend's, nor traffic.
                    let data = match self.keepalive.as_mut() {
                        Some(k) => k.heard(&data, Instant::now()),
                        None => data,
                    };
                    if data.is_empty() {
                        continue;
                    }
                    last_read = Instant::now();
                    // Once the gateway has closed towards the backend, what the client sends
                    // (its close reply included) is for the gateway, not the backend.
                    let forward = !draining || self.owe_backend;
                    self.up.feed(&data);
                    if forward {
                        up.queue(data);
                    }
                    self.settle(session, up);
                }
                Event::FromBackend(Some(data)) => {
                    last_read = Instant::now();
                    let forward = !draining || self.owe_client;
                    self.down.feed(&data);
                    if forward {
                        to_client(session, data);
                    }
                    self.settle(session, up);
                }
            }
            backend_write_since = match (up.writing(), backend_write_since) {
                (false, _) => None,
                (true, None) => Some(Instant::now()),
                (true, since) => since,
            };
        }
    }

    /// Sends the keepalive's ping when one is due and the client's direction is at a frame
    /// boundary (else after the backend's frame in progress).
    fn ping_client(&mut self, session: &mut Session) {
        let Some(k) = self.keepalive.as_mut() else { return };
        let now = Instant::now();
        if k.due(now) == Due::Ping && self.down.at_boundary() {
            to_client(session, k.ping_frame(now));
        }
    }

    /// The gateway is stopping: owe both sides a close frame.
    fn start_drain(&mut self, session: &mut Session, up: &mut Backend) {
        self.owe_client = !self.down.close_seen();
        self.owe_backend = !self.up.close_seen();
        self.settle(session, up)
    }

    /// Queues each owed close frame as soon as its direction is at a frame boundary. (The
    /// trackers are not fed the gateway's own frames: they record what each side sent.)
    fn settle(&mut self, session: &mut Session, up: &mut Backend) {
        if self.owe_client && self.down.at_boundary() {
            self.owe_client = false;
            to_client(session, Bytes::from_static(&CLOSE_GOING_AWAY_TO_CLIENT));
        }
        if self.owe_backend && self.up.at_boundary() {
            self.owe_backend = false;
            up.queue(Bytes::copy_from_slice(&close_going_away_to_server(rand::random())));
        }
    }
}

/// Queues bytes for the client; [`poll_io`] writes them.
fn to_client(session: &mut Session, data: Bytes) {
    session.downstream_session.send_downstream_proxy_task(HttpTask::UpgradedBody(Some(data), false));
}

/// Polls the pending writes to each side, and the reads from each side whose previous bytes
/// went out; the first that completes is the event. Every future polled here is cancel-safe
/// and made anew on each poll: the client session's are Pingora's (its reads keep no state
/// across a pending poll, its proxy-task writes resume where they stopped), the backend's
/// are [`Backend`]'s.
fn poll_io(cx: &mut Context<'_>, session: &mut Session, up: &mut Backend) -> Poll<Result<Event>> {
    let client = &mut session.downstream_session;
    let client_writing = client.has_pending_downstream_proxy_tasks();
    if client_writing {
        if let Poll::Ready(r) = pin!(client.write_downstream_proxy_tasks()).poll(cx) {
            return Poll::Ready(r.map(|_| Event::Wrote));
        }
    }
    let backend_writing = up.writing();
    if backend_writing {
        if let Poll::Ready(r) = up.poll_write(cx) {
            return Poll::Ready(r.map(|()| Event::Wrote));
        }
    } else if let Poll::Ready(r) = pin!(client.read_request_body()).poll(cx) {
        return Poll::Ready(r.map(Event::FromClient));
    }
    if !client_writing {
        if let Poll::Ready(r) = up.poll_read(cx) {
            return Poll::Ready(r.map(Event::FromBackend));
        }
    }
    Poll::Pending
}

/// Writes out what is queued for either side.
fn poll_flush(cx: &mut Context<'_>, session: &mut Session, up: &mut Backend) -> Poll<Result<()>> {
    let client = &mut session.downstream_session;
    let client_done = !client.has_pending_downstream_proxy_tasks()
        || pin!(client.write_downstream_proxy_tasks()).poll(cx)?.is_ready();
    let backend_done = up.poll_write(cx)?.is_ready();
    if client_done && backend_done {
        Poll::Ready(Ok(()))
    } else {
        Poll::Pending
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
