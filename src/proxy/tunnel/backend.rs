//! The backend side of a tunnel, on a bare connection: the upgrade request goes out as
//! HTTP/1.1, the answer's header is parsed here, and after a 101 the connection is a byte
//! pipe. (No HTTP client session stays around for the life of the tunnel: its buffers would
//! be held by every idle tunnel.)

use bytes::{Buf, Bytes, BytesMut};
use pingora::prelude::*;
use pingora_core::protocols::http::v1::client::http_req_header_to_wire;
use pingora_core::protocols::Stream;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response header accepted from a backend.
const MAX_HEADER: usize = 64 * 1024;
/// Largest body of a refused upgrade passed on to the client.
pub const MAX_REFUSAL_BODY: usize = 256 * 1024;
/// A tunnel's reads start this small (an idle tunnel holds one such buffer) and grow while
/// reads fill them, up to [`READ_MAX`].
const READ_MIN: usize = 2 * 1024;
const READ_MAX: usize = 64 * 1024;

/// An open connection to the backend.
pub struct Backend {
    stream: Stream,
    /// Bytes read past the end of what was parsed.
    pending: BytesMut,
    read_size: usize,
    write_timeout: Duration,
}

impl Backend {
    pub fn new(stream: Stream, write_timeout: Duration) -> Self {
        Backend { stream, pending: BytesMut::new(), read_size: READ_MIN, write_timeout }
    }

    /// Writes the request header; `Err` is an upstream error (nothing was answered yet).
    pub async fn send_request(&mut self, req: &RequestHeader) -> Result<()> {
        let wire = http_req_header_to_wire(req)
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "request header cannot be written"))?;
        self.write(&wire).await
    }

    /// Reads the answer's header (skipping `100 Continue` and other interim answers but 101).
    pub async fn read_response(&mut self, within: Duration) -> Result<ResponseHeader> {
        let read = async {
            loop {
                if let Some(resp) = self.parse_header()? {
                    if resp.status.is_informational() && resp.status.as_u16() != 101 {
                        continue;
                    }
                    return Ok(resp);
                }
                if self.pending.len() > MAX_HEADER {
                    return Error::e_explain(ErrorType::InvalidHTTPHeader, "response header too large");
                }
                self.pending.reserve(4096);
                let n = self.stream.read_buf(&mut self.pending).await.or_err(ErrorType::ReadError, "reading header")?;
                if n == 0 {
                    return Error::e_explain(ErrorType::ConnectionClosed, "closed before the response header");
                }
            }
        };
        match tokio::time::timeout(within, read).await {
            Ok(r) => r.map_err(upstream),
            Err(_) => Err(upstream(Error::explain(ErrorType::ReadTimedout, "waiting for the response header"))),
        }
    }

    fn parse_header(&mut self) -> Result<Option<ResponseHeader>> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        let len = match parsed.parse(&self.pending) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Error::e_explain(ErrorType::InvalidHTTPHeader, format!("response header: {e}")),
        };
        let code = parsed.code.unwrap_or(502);
        let mut resp = ResponseHeader::build(code, Some(parsed.headers.len()))?;
        if let Some(reason) = parsed.reason {
            resp.set_reason_phrase(Some(reason))?;
        }
        for h in parsed.headers.iter() {
            resp.append_header(h.name.to_string(), h.value)?;
        }
        self.pending.advance(len);
        Ok(Some(resp))
    }

    /// The next bytes from the backend, `None` at its end of stream.
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(self.pending.split().freeze()));
        }
        let mut buf = BytesMut::with_capacity(self.read_size);
        let n = self
            .stream
            .read_buf(&mut buf)
            .await
            .or_err(ErrorType::ReadError, "reading from the backend")
            .map_err(upstream)?;
        if n == 0 {
            return Ok(None);
        }
        // Reads that fill the buffer ask for a bigger one next time; small reads shrink it.
        self.read_size = if n == buf.capacity() { (self.read_size * 2).min(READ_MAX) } else { READ_MIN.max(n) };
        Ok(Some(buf.freeze()))
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let write = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        let written = match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r.or_err(ErrorType::WriteError, "writing to the backend"),
            Err(_) => Error::e_explain(ErrorType::WriteTimedout, "writing to the backend"),
        };
        written.map_err(upstream)
    }

    /// The body of a refused upgrade (framed by its header), at most [`MAX_REFUSAL_BODY`].
    pub async fn read_refusal_body(&mut self, resp: &ResponseHeader, within: Duration) -> Result<Bytes> {
        let framing = Framing::of(resp);
        let read = async {
            loop {
                match framing.complete(&self.pending)? {
                    Some(body) => return Ok(body),
                    None if self.pending.len() > MAX_REFUSAL_BODY + MAX_HEADER => {
                        return Error::e_explain(ErrorType::InvalidHTTPHeader, "refusal body too large")
                    }
                    None => {}
                }
                self.pending.reserve(8192);
                let n = self.stream.read_buf(&mut self.pending).await.or_err(ErrorType::ReadError, "reading body")?;
                if n == 0 {
                    return match framing {
                        Framing::UntilClose => Ok(self.pending.split().freeze()),
                        _ => Error::e_explain(ErrorType::ConnectionClosed, "closed inside the body"),
                    };
                }
            }
        };
        match tokio::time::timeout(within, read).await {
            Ok(r) => r.map_err(upstream),
            Err(_) => Err(upstream(Error::explain(ErrorType::ReadTimedout, "reading the response body"))),
        }
    }
}

/// Marks an error as the upstream's.
fn upstream(e: Box<Error>) -> Box<Error> {
    e.into_up()
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Framing {
    fn of(resp: &ResponseHeader) -> Self {
        let h = &resp.headers;
        let chunked = h
            .get(http::header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return Framing::Chunked;
        }
        if matches!(resp.status.as_u16(), 204 | 304) {
            return Framing::Length(0);
        }
        match h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()) {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    }

    /// The whole body, once `buf` holds it.
    fn complete(self, buf: &[u8]) -> Result<Option<Bytes>> {
        match self {
            Framing::Length(n) if n > MAX_REFUSAL_BODY => {
                Error::e_explain(ErrorType::InvalidHTTPHeader, "refusal body too large")
            }
            Framing::Length(n) => Ok((buf.len() >= n).then(|| Bytes::copy_from_slice(&buf[..n]))),
            Framing::Chunked => dechunk(buf),
            Framing::UntilClose => Ok(None),
        }
    }
}

/// Decodes a whole chunked body (trailers dropped); `None` while incomplete.
fn dechunk(mut buf: &[u8]) -> Result<Option<Bytes>> {
    let bad = || Error::explain(ErrorType::InvalidHTTPHeader, "malformed chunked body");
    let mut out = Vec::new();
    loop {
        let Some(eol) = memchr::memmem::find(buf, b"\r\n") else { return Ok(None) };
        let size_field = std::str::from_utf8(&buf[..eol]).map_err(|_| bad())?;
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad())?;
        buf = &buf[eol + 2..];
        if size == 0 {
            // Trailer lines, then a blank line.
            loop {
                let Some(eol) = memchr::memmem::find(buf, b"\r\n") else { return Ok(None) };
                if eol == 0 {
                    return Ok(Some(out.into()));
                }
                buf = &buf[eol + 2..];
            }
        }
        if size > MAX_REFUSAL_BODY || out.len() + size > MAX_REFUSAL_BODY {
            return Err(bad());
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(bad());
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_once_complete() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(dechunk(body).unwrap().unwrap(), Bytes::from_static(b"hello, world"));
        for cut in 0..body.len() {
            assert!(dechunk(&body[..cut]).unwrap().is_none(), "complete at {cut}?");
        }
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nabc\r\n").is_err());
        assert_eq!(dechunk(b"0\r\n\r\n").unwrap().unwrap(), Bytes::new());
    }

    #[test]
    fn framing_follows_the_header() {
        let mut r = ResponseHeader::build(400, None).unwrap();
        assert_eq!(Framing::of(&r), Framing::UntilClose);
        r.insert_header("content-length", "3").unwrap();
        assert_eq!(Framing::of(&r), Framing::Length(3));
        assert_eq!(Framing::Length(3).complete(b"ab").unwrap(), None);
        assert_eq!(Framing::Length(3).complete(b"abcd").unwrap().unwrap(), Bytes::from_static(b"abc"));
        r.insert_header("transfer-encoding", "chunked").unwrap();
        assert_eq!(Framing::of(&r), Framing::Chunked);
    }
}
