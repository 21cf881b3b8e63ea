//! The open tunnel: bytes both ways until either side closes or both fall silent for the
//! idle timeout; on drain, a 1001 close frame to each side at its next frame boundary.

use super::backend::Backend;
use crate::proxy::ws_frames::{close_going_away_to_server, FrameTracker, CLOSE_GOING_AWAY_TO_CLIENT};
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use std::time::Duration;
use tokio::sync::watch;

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
    pub fn new(idle: Duration) -> Self {
        Tunnel { idle, ..Default::default() }
    }

    /// Relays until either side closes, the tunnel idles out, or a drain completes. Errors
    /// on either side end the tunnel; they are routine here (the response is long written).
    pub async fn relay(
        &mut self,
        session: &mut Session,
        up: &mut Backend,
        drain: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let end = self.pump(session, up, drain).await;
        if let Err(e) = &end {
            log::debug!("tunnel ended: {e}");
        }
        let _ = session.write_response_body(None, true).await;
        Ok(())
    }

    async fn pump(&mut self, session: &mut Session, up: &mut Backend, drain: &mut watch::Receiver<bool>) -> Result<()> {
        // The drain may have begun while the tunnel was being set up.
        let mut draining = *drain.borrow();
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

    /// The gateway is stopping: owe both sides a close frame.
    async fn start_drain(&mut self, session: &mut Session, up: &mut Backend) -> Result<()> {
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
