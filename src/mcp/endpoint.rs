//! Legacy HTTP+SSE (2024-11-05): the server's first event, `event: endpoint`, names the URL
//! for the client's POSTs (`/messages/?session_id=<hex>`). The gateway rewrites it so the
//! URL lies in the gateway's own path space (the route's prefix in place of the provider's
//! base path) and carries a sealed token naming the backend that owns the stream; it stays
//! relative and same-origin, as SDK clients require. Events are found by the one SSE
//! tokenizer ([`crate::sse`]): they may be split across chunks, share a chunk, and end lines
//! with LF, CRLF or CR. Everything after
//! the endpoint event passes untouched; nothing is held beyond `MAX_HELD` bytes.

use super::seal::{Pinned, Sealer};
use crate::sse::{field, Token, Tokenizer};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;

const MAX_HELD: usize = 64 * 1024;
const PARAMS: [&str; 2] = ["session_id", "sessionId"];

#[derive(Debug)]
pub struct EndpointRewriter {
    sealer: Sealer,
    provider: String,
    backend: SocketAddr,
    /// The API key's name the session is sealed for.
    key: String,
    /// Provider base path to remove, client prefix to put in its place.
    base_path: String,
    client_prefix: String,
    tok: Tokenizer,
    /// Raw bytes of the event in progress.
    held: BytesMut,
    /// The event in progress is the endpoint event.
    endpoint: bool,
    done: bool,
}

impl EndpointRewriter {
    pub fn new(
        sealer: Sealer,
        provider: &str,
        backend: SocketAddr,
        key: &str,
        base_path: &str,
        client_prefix: &str,
    ) -> Self {
        EndpointRewriter {
            sealer,
            provider: provider.to_string(),
            backend,
            key: key.to_string(),
            base_path: base_path.to_string(),
            client_prefix: client_prefix.to_string(),
            tok: Tokenizer::new(MAX_HELD),
            held: BytesMut::new(),
            endpoint: false,
            done: false,
        }
    }

    /// Takes a chunk from the upstream, returns what to send now.
    pub fn feed(&mut self, chunk: Bytes, end: bool) -> Bytes {
        if self.done {
            return chunk;
        }
        let mut out = BytesMut::new();
        let mut start = 0;
        // Offset in `chunk` where the endpoint event ended: the rest passes untouched.
        let mut cut = None;
        let EndpointRewriter { tok, held, endpoint, .. } = self;
        tok.feed(&chunk, |t, at| {
            if cut.is_some() {
                return;
            }
            held.extend_from_slice(&chunk[start..at]);
            start = at;
            match t {
                Token::Line { text, .. } => *endpoint |= field(text, b"event") == Some(b"endpoint"),
                Token::Blank { .. } if *endpoint => cut = Some(at),
                Token::Blank { .. } => out.extend_from_slice(&held.split()),
                Token::LongLine | Token::CrLfTail => {}
            }
        });
        if let Some(at) = cut {
            let event = self.held.split();
            out.extend_from_slice(&self.rewrite(&event));
            out.extend_from_slice(&chunk[at..]);
            self.done = true;
            return out.freeze();
        }
        self.held.extend_from_slice(&chunk[start..]);
        if end || self.held.len() > MAX_HELD {
            if !end {
                log::warn!("MCP SSE stream: no endpoint event in the first {MAX_HELD} bytes; passing it through");
            }
            self.done = true;
            out.extend_from_slice(&self.held.split());
        }
        out.freeze()
    }

    /// The endpoint event with its `data` URL mapped; every other byte as it came.
    fn rewrite(&self, event: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(event.len() + 128);
        Tokenizer::new(MAX_HELD).feed(event, |t, _| match t {
            Token::Line { text, eol } => {
                match field(text, b"data") {
                    Some(value) => {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(self.map_url(&String::from_utf8_lossy(value)).as_bytes());
                    }
                    None => out.extend_from_slice(text),
                }
                out.extend_from_slice(eol);
            }
            Token::Blank { eol } => out.extend_from_slice(eol),
            Token::CrLfTail => out.push(b'\n'),
            Token::LongLine => {}
        });
        out
    }

    /// The backend's message URL as the client must see it: path-absolute, gateway prefix,
    /// sealed session token.
    pub fn map_url(&self, url: &str) -> String {
        let Ok(base) = url::Url::parse("http://backend.invalid/") else { return url.to_string() };
        let Ok(u) = base.join(url.trim()) else { return url.to_string() };
        let path = u.path();
        let tail = match path.strip_prefix(self.base_path.as_str()) {
            Some(t) if self.base_path.is_empty() || t.is_empty() || t.starts_with('/') => t,
            _ => {
                log::warn!("MCP endpoint {path:?} lies outside the provider's base path; left as is");
                path
            }
        };
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let mut sealed_one = false;
        for (k, v) in u.query_pairs() {
            if !sealed_one && PARAMS.contains(&k.as_ref()) {
                let pin = Pinned {
                    provider: self.provider.clone(),
                    backend: self.backend,
                    token: v.into_owned(),
                    key: self.key.clone(),
                };
                query.append_pair(&k, &self.sealer.seal(&pin));
                sealed_one = true;
            } else {
                query.append_pair(&k, &v);
            }
        }
        let query = query.finish();
        let mut out = format!("{}{}", self.client_prefix, tail);
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw() -> EndpointRewriter {
        let s = Sealer::new([3; 32]);
        EndpointRewriter::new(s, "mcp", "127.0.0.1:9000".parse().unwrap(), "alice", "", "/mcp-legacy")
    }

    fn run(chunks: &[&str]) -> String {
        let mut r = rw();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&r.feed(Bytes::copy_from_slice(c.as_bytes()), i + 1 == chunks.len()));
        }
        String::from_utf8(out).unwrap()
    }

    fn token_of(out: &str) -> String {
        let at = out.find("session_id=").unwrap() + "session_id=".len();
        out[at..].split(|c: char| c.is_whitespace() || c == '&').next().unwrap().to_string()
    }

    #[test]
    fn rewrites_split_crlf_endpoint() {
        let out = run(&["event: endpo", "int\r\ndata: /messages/?session_id=abc\r", "\n\r\n: ping\r\n\r\n"]);
        assert!(out.starts_with("event: endpoint\r\ndata: /mcp-legacy/messages/?session_id="), "{out}");
        assert!(out.ends_with("\r\n\r\n: ping\r\n\r\n"), "{out}");
        let pin = Sealer::new([3; 32]).open(&token_of(&out)).unwrap();
        assert_eq!(pin.token, "abc");
        assert_eq!(pin.backend, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn lf_and_later_events_untouched() {
        let out =
            run(&["event: endpoint\ndata: /messages/?session_id=x\n\nevent: message\ndata: {\"session_id=\":1}\n\n"]);
        assert!(out.starts_with("event: endpoint\ndata: /mcp-legacy/messages/?session_id="), "{out}");
        assert!(out.ends_with("\n\nevent: message\ndata: {\"session_id=\":1}\n\n"), "{out}");
    }

    #[test]
    fn absolute_url_becomes_relative() {
        let out = run(&["event: endpoint\ndata: http://10.0.0.1:9000/messages?sessionId=q&x=1\n\n"]);
        assert!(out.starts_with("event: endpoint\ndata: /mcp-legacy/messages?sessionId="), "{out}");
        assert!(out.contains("&x=1\n\n"), "{out}");
    }

    #[test]
    fn base_path_is_swapped() {
        let s = Sealer::new([3; 32]);
        let r = EndpointRewriter::new(s, "mcp", "127.0.0.1:9000".parse().unwrap(), "alice", "/srv", "/tools");
        assert!(r.map_url("/srv/messages/?session_id=1").starts_with("/tools/messages/?session_id="));
    }

    #[test]
    fn nothing_held_past_the_end() {
        assert_eq!(run(&["data: no endpoint here\n"]), "data: no endpoint here\n");
    }
}
