//! Keepalive comments for event streams. Pingora calls body filters only when bytes arrive, so
//! nothing in its proxy loop can speak while the upstream is silent. On a route with
//! `heartbeat`, the main request therefore hands the request to a subrequest (which runs the
//! whole proxy path: pinning, rewriting, accounting) and relays the subrequest's output
//! itself: when nothing arrived for `heartbeat`, it writes `: keepalive` — only at an event
//! boundary, never inside an event. Each write awaits the client, and the subrequest channel
//! holds at most 4 tasks, so a slow client slows the upstream instead of growing a buffer.

use super::ctx::Routed;
use super::respond;
use crate::error::GatewayError;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::protocols::http::HttpTask;
use pingora_proxy::subrequest::BodyMode;
use pingora_proxy::Session;
use std::time::Duration;

/// The comment line sent on silence; SSE parsers ignore lines starting with ':'.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Whether this request can be relayed (main requests only; a subrequest cannot spawn one).
pub fn usable(session: &Session) -> bool {
    session.subrequest_ctx.is_none() && session.subrequest_spawner.is_some()
}

/// Tracks whether the bytes written so far end at an SSE event boundary (a blank line), with
/// LF, CRLF or a mix, however the events are split across chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary {
    /// Line breaks seen since the last byte that was not part of a line break (a CR LF pair
    /// counts once).
    breaks: u8,
    last_cr: bool,
    started: bool,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary { breaks: 2, last_cr: false, started: false }
    }
}

impl Boundary {
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            self.started = true;
            match b {
                b'\n' if self.last_cr => self.last_cr = false, // the LF of a CR LF
                b'\n' => self.breaks = self.breaks.saturating_add(1),
                b'\r' => {
                    self.breaks = self.breaks.saturating_add(1);
                    self.last_cr = true;
                }
                _ => {
                    self.breaks = 0;
                    self.last_cr = false;
                }
            }
        }
    }

    /// True before any byte, and after a blank line.
    pub fn at_boundary(&self) -> bool {
        !self.started || self.breaks >= 2
    }
}

/// Relays the request through a subrequest, adding keepalives on silence.
pub async fn run(session: &mut Session, routed: Routed, body: Vec<Bytes>, every: Duration) -> Result<()> {
    let request_id = routed.request_id.clone();
    let mode = if body.is_empty() { BodyMode::NoBody } else { BodyMode::ExpectBody };
    let Some((sub, handle)) = super::pipe::subrequest(session, routed, mode) else {
        return respond::error(session, &GatewayError::Internal, &request_id).await;
    };
    let task = tokio::spawn(sub.run());
    let tx = handle.tx;
    let mut rx = handle.rx;
    // Feed the body (already read by the gateway) as the subrequest asks for it.
    let feeder_tx = tx.clone();
    let feeder = tokio::spawn(async move {
        if body.is_empty() {
            return;
        }
        for chunk in body {
            if feeder_tx.send(HttpTask::Body(Some(chunk), false)).await.is_err() {
                return;
            }
        }
        let _ = feeder_tx.send(HttpTask::Body(None, true)).await;
    });
    let result = relay(session, &mut rx, every).await;
    feeder.abort();
    drop(tx);
    drop(rx);
    if result.is_err() {
        // The client is gone or the stream failed: stop the subrequest and its upstream.
        task.abort();
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            if session.response_written().is_none() {
                let err = GatewayError::BadGateway("upstream failed".into());
                return respond::error(session, &err, &request_id).await;
            }
            log::debug!("heartbeat relay ended: {e}");
            Ok(())
        }
    }
}

/// What woke the relay.
enum Event {
    /// The client closed its connection.
    ClientGone(Box<Error>),
    /// The client sent bytes (a pipelined request): stop watching it.
    ClientSpoke,
    /// Nothing arrived for `every`.
    Silent,
    /// A task from the subrequest; `None` when it is done.
    Task(Option<HttpTask>),
}

async fn relay(session: &mut Session, rx: &mut tokio::sync::mpsc::Receiver<HttpTask>, every: Duration) -> Result<()> {
    let mut boundary = Boundary::default();
    let mut sse = false;
    let mut watch_client = true;
    loop {
        // The client is watched too, so a stream whose client left ends at once instead of
        // at the next heartbeat or upstream byte.
        let event = tokio::select! {
            r = session.downstream_session.read_body_or_idle(true), if watch_client => match r {
                Err(e) => Event::ClientGone(e),
                Ok(_) => Event::ClientSpoke,
            },
            t = tokio::time::timeout(every, rx.recv()) => match t {
                Err(_) => Event::Silent,
                Ok(task) => Event::Task(task),
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
            Event::Task(None) => return Ok(()),
            Event::Task(Some(task)) => {
                match &task {
                    HttpTask::Header(h, _) => {
                        sse = h
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
                    }
                    HttpTask::Body(Some(b), _) => boundary.feed(b),
                    _ => {}
                }
                if session.write_response_tasks(vec![task]).await? {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Boundary;

    fn after(chunks: &[&str]) -> bool {
        let mut b = Boundary::default();
        for c in chunks {
            b.feed(c.as_bytes());
        }
        b.at_boundary()
    }

    #[test]
    fn boundaries() {
        assert!(after(&[]));
        assert!(after(&["data: a\n\n"]));
        assert!(after(&["data: a\r\n\r\n"]));
        assert!(after(&["data: a\r\n", "\r\n"]));
        assert!(after(&["data: a\n", "\n"]));
        assert!(!after(&["data: a\n"]));
        assert!(!after(&["data: a\r\n"]));
        assert!(!after(&["data: a\n\ndata: b"]));
        assert!(!after(&["event: x\ndata: a\n"]));
        assert!(!after(&["data: a\r\n\r\nda", "ta: b\r"]));
        assert!(after(&["data: a\r\n\r\nda", "ta: b\r", "\n\r\n"]));
    }
}
