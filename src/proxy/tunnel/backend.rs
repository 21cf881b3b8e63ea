//! The backend side of a tunnel. The upgrade request goes out, and its answer (a 101, or a
//! refusal with a body in any framing) comes back, through Pingora's HTTP/1 client session;
//! after a 101 the session hands over its connection, a byte pipe from then on.
//!
//! The session is not kept for the tunnel's life: every idle tunnel would hold its 64 KiB body
//! buffer, and its reads and writes both take `&mut self`, so the two directions could not
//! move independently ([`super::relay`]). `HttpSession::into_inner` returns the connection
//! but not the bytes read past the 101 header (a backend may send its first frame in the same
//! packet); those come first out of the session's own body reader, which after a 101 is
//! close-delimited and returns them before it reads the connection ([`Upgrade::into_pipe`]).
//! A Pingora change making `into_inner` return them too would turn that into one call; the
//! public API is enough, so the gateway carries no patch for it.
//!
//! Measured (`tunnel::memory_per_idle_tunnel` in tests/tunnel.rs, debug build): about 66 KiB
//! of gateway RSS per idle tunnel, as before this design; most of it is the client's side.

use bytes::{Buf, Bytes, BytesMut};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};

/// Largest body of a refused upgrade passed on to the client.
pub const MAX_REFUSAL_BODY: usize = 256 * 1024;
/// A tunnel's reads start this small (an idle tunnel holds one such buffer) and grow while
/// reads fill them, up to [`READ_MAX`].
const READ_MIN: usize = 2 * 1024;
const READ_MAX: usize = 64 * 1024;

/// The upgrade exchange, on Pingora's HTTP/1 client session.
pub struct Upgrade(HttpSession);

impl Upgrade {
    /// `read` and `write` bound each read and write of the exchange.
    pub fn new(stream: Stream, peer: &HttpPeer, read: Duration, write: Duration) -> Self {
        let mut session = HttpSession::new_with_options(stream, peer);
        session.read_timeout = Some(read);
        session.write_timeout = Some(write);
        Upgrade(session)
    }

    /// Sends the request header and reads the answer's (skipping interim answers but 101).
    /// `Err` is an upstream error: nothing was answered yet.
    pub async fn exchange(&mut self, req: RequestHeader) -> Result<Box<ResponseHeader>> {
        self.0.write_request_header(Box::new(req)).await.map_err(upstream)?;
        loop {
            let resp = self.0.read_resp_header_parts().await.map_err(upstream)?;
            if !resp.status.is_informational() || resp.status.as_u16() == 101 {
                return Ok(resp);
            }
        }
    }

    /// The body of a refused upgrade, however it is framed, at most [`MAX_REFUSAL_BODY`].
    pub async fn refusal_body(&mut self) -> Result<Bytes> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.0.read_body_ref().await.map_err(upstream)? {
            if body.len() + chunk.len() > MAX_REFUSAL_BODY {
                return Err(upstream(Error::explain(ErrorType::InvalidHTTPHeader, "refusal body too large")));
            }
            body.extend_from_slice(chunk);
        }
        Ok(body.freeze())
    }

    /// After a 101: the connection as a byte pipe, starting with what the backend sent along
    /// with the 101 header.
    pub async fn into_pipe(mut self, write_timeout: Duration) -> Result<Backend> {
        // One poll: the bytes read with the header come back without touching the connection;
        // without any, the read is polled once and dropped, which consumes nothing.
        let first = {
            let mut read = pin!(self.0.read_body_bytes());
            std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
        };
        let (first, ended) = match first {
            Poll::Ready(Ok(Some(bytes))) => (Some(bytes), false),
            Poll::Ready(Ok(None)) => (None, true),
            Poll::Ready(Err(e)) => return Err(upstream(e)),
            Poll::Pending => (None, false),
        };
        Ok(Backend {
            stream: self.0.into_inner(),
            first,
            ended,
            read_buf: BytesMut::new(),
            read_size: READ_MIN,
            out: VecDeque::new(),
            unflushed: false,
            write_timeout,
        })
    }
}

/// The backend connection of an open tunnel. Reads and writes are polled (not awaited) so the
/// relay can wait for both directions at once; each is resumable where it stopped.
pub struct Backend {
    stream: Stream,
    /// Bytes the backend sent with its 101, not yet relayed.
    first: Option<Bytes>,
    /// The backend closed right after its 101.
    ended: bool,
    read_buf: BytesMut,
    read_size: usize,
    /// Bytes for the backend not yet written (at most one client read and one close frame).
    out: VecDeque<Bytes>,
    unflushed: bool,
    pub write_timeout: Duration,
}

impl Backend {
    /// The next bytes from the backend, `None` at its end of stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Ok(Some(first)));
        }
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        if self.read_buf.capacity() == 0 {
            self.read_buf.reserve(self.read_size);
        }
        // `read_buf` keeps no state of its own: a new one each poll resumes the read.
        let read = ready!(pin!(self.stream.read_buf(&mut self.read_buf)).poll(cx));
        let n = read.or_err(ErrorType::ReadError, "reading from the backend").map_err(upstream)?;
        if n == 0 {
            self.ended = true;
            return Poll::Ready(Ok(None));
        }
        // Reads that fill the buffer ask for a bigger one next time; small reads shrink it.
        let filled = n == self.read_buf.capacity();
        self.read_size = if filled { (self.read_size * 2).min(READ_MAX) } else { READ_MIN.max(n) };
        Poll::Ready(Ok(Some(self.read_buf.split().freeze())))
    }

    /// Queues bytes for the backend; [`Self::poll_write`] writes them.
    pub fn queue(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.out.push_back(data);
        }
    }

    /// Bytes are queued or not yet flushed.
    pub fn writing(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Writes and flushes what is queued; `Ready(Ok)` once all of it went out.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let written = loop {
            if let Some(front) = self.out.front_mut() {
                match ready!(Pin::new(&mut self.stream).poll_write(cx, front)) {
                    Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                        self.unflushed = true;
                    }
                    Err(e) => break Err(e),
                }
            } else if self.unflushed {
                match ready!(Pin::new(&mut self.stream).poll_flush(cx)) {
                    Ok(()) => self.unflushed = false,
                    Err(e) => break Err(e),
                }
            } else {
                break Ok(());
            }
        };
        Poll::Ready(written.or_err(ErrorType::WriteError, "writing to the backend").map_err(upstream))
    }
}

/// Marks an error as the upstream's.
fn upstream(e: Box<Error>) -> Box<Error> {
    e.into_up()
}
