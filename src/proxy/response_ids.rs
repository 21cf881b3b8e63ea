//! Responses API affinity without shared state. vLLM keeps a stored response on the replica
//! that produced it, so a follow-up (`previous_response_id`), `GET …/v1/responses/{id}` and
//! `POST …/v1/responses/{id}/cancel` only work there. The gateway seals the replica's identity
//! into the id the client sees (`resp_` + a value sealed like an MCP session id, see
//! `src/mcp/seal.rs`, carrying provider, backend address, key name and the backend's own id)
//! and unseals it on every request that names one:
//! - an id that does not unseal, is older than `mcp.session_ttl`, belongs to another key, or
//!   names a provider or backend no longer configured: 404 `response_not_found`;
//! - a backend that is configured but down (probes or circuit): 503, never another replica.
//!
//! The key is `mcp.session_key` (one secret to distribute and rotate; see README). Sealed
//! response values carry their backend id as `response:<id>`, so an MCP session id sealed with
//! the same key never opens as a response id.
//!
//! Answers are spliced, never re-serialised: in a 2xx JSON body or SSE event every quoted
//! occurrence of a backend response id (`id`, `previous_response_id`, also inside the streamed
//! events' `response`) is replaced by its sealed form; every other byte passes unchanged.

use super::ctx::Routed;
use super::route::BodyPlan;
use super::usage::BodyKind;
use crate::error::GatewayError;
use crate::mcp::seal::{Pinned, Sealer};
use crate::routes::RouteKind;
use crate::sse::{Token, Tokenizer};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::value::RawValue;
use std::net::SocketAddr;

/// What the client sees in front of the sealed value (vLLM's own ids start with it too, and
/// vLLM refuses ids without it).
pub const ID_PREFIX: &str = "resp_";
/// Marks the sealed token as a response id (not an MCP session).
const TOKEN_PREFIX: &str = "response:";
/// A JSON answer larger than this passes unsealed (follow-ups to it then get 404).
const MAX_HELD: usize = 4 << 20;

/// A Responses API call, read from the path sent upstream.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    Create,
    /// `…/v1/responses/{id}` and below (`/cancel`, `/input_items`).
    ById(String),
}

fn call(path: &str, method: &http::Method) -> Option<Call> {
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().rposition(|s| *s == "responses")?;
    if at == 0 || segments[at - 1] != "v1" {
        return None;
    }
    match segments.get(at + 1) {
        None | Some(&"") => (method == http::Method::POST).then_some(Call::Create),
        Some(id) => Some(Call::ById((*id).to_string())),
    }
}

/// Unseals the id a Responses API request names and pins the request to its backend (path or
/// `previous_response_id` rewritten to the backend's id); returns the answer's rewriter.
pub fn admit(req: &RequestHeader, routed: &mut Routed, body: &mut BodyPlan) -> Result<Option<IdRewrite>, GatewayError> {
    if routed.streams.opts.kind != RouteKind::OpenAi {
        return Ok(None);
    }
    let Some(sealer) = routed.runtime.mcp.clone() else { return Ok(None) };
    let path = routed.upstream_path.split('?').next().unwrap_or("").to_string();
    let Some(call) = call(&path, &req.method) else { return Ok(None) };
    let mut rw = IdRewrite::new(sealer.clone(), routed.key.name.to_string());
    match call {
        Call::ById(client_id) => {
            let backend_id = pin(routed, &sealer, &client_id)?;
            let (from, to) = (format!("/responses/{client_id}"), format!("/responses/{backend_id}"));
            routed.upstream_path = routed.upstream_path.replacen(&from, &to, 1);
            rw.ids.remember(backend_id, client_id);
        }
        Call::Create => {
            let current = match (&routed.new_body, &*body) {
                (Some(b), _) => b.clone(),
                (None, BodyPlan::Replay(b)) => b.clone(),
                (None, BodyPlan::Untouched) => Bytes::new(),
            };
            if let Some((range, client_id)) = previous_id(&current) {
                let backend_id = pin(routed, &sealer, &client_id)?;
                let quoted = serde_json::to_vec(&backend_id).map_err(|_| GatewayError::Internal)?;
                let new = Bytes::from([&current[..range.start], &quoted, &current[range.end..]].concat());
                routed.body_len = Some(new.len());
                routed.new_body = Some(new.clone());
                *body = BodyPlan::Replay(new);
                rw.ids.remember(backend_id, client_id);
            } else {
                // A new chain: its follow-ups go where it lands, so it lands by load.
                routed.streams.new_session = true;
            }
        }
    }
    Ok(Some(rw))
}

/// The byte range of the top-level `previous_response_id` string value and its text. (The
/// body scanner already refused repeated keys, so there is one.)
fn previous_id(body: &[u8]) -> Option<(std::ops::Range<usize>, String)> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        previous_response_id: Option<&'a RawValue>,
    }
    let doc: Doc = serde_json::from_slice(body).ok()?;
    let raw = doc.previous_response_id?;
    let id: String = serde_json::from_str(raw.get()).ok()?;
    // The raw value borrows from `body`: its offset is where it starts.
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    Some((start..start + raw.get().len(), id))
}

/// Opens a client's response id; pins `routed` to the backend named inside and returns the
/// backend's own id.
fn pin(routed: &mut Routed, sealer: &Sealer, client_id: &str) -> Result<String, GatewayError> {
    let not_found = || GatewayError::ResponseNotFound;
    let sealed = client_id.strip_prefix(ID_PREFIX).ok_or_else(not_found)?;
    let p = sealer.open(sealed).map_err(|_| not_found())?;
    let backend_id = p.token.strip_prefix(TOKEN_PREFIX).ok_or_else(not_found)?.to_string();
    if p.key != *routed.key.name {
        return Err(not_found());
    }
    let rt = routed.runtime.clone();
    let (index, provider) =
        rt.providers.iter().enumerate().find(|(_, pr)| *pr.name == p.provider).ok_or_else(not_found)?;
    let backend = provider.backends.iter().find(|b| b.addr == p.backend).ok_or_else(not_found)?;
    if !provider.usable(backend, crate::clock::now_ms()) {
        return Err(GatewayError::Unavailable("the replica that holds this response is down".into()));
    }
    routed.provider = provider.clone();
    routed.provider_index = index;
    routed.streams.pin = Some(p);
    Ok(backend_id)
}

/// Seals backend response ids in a 2xx answer (JSON body or SSE events).
#[derive(Debug)]
pub struct IdRewrite {
    ids: Ids,
    mode: BodyKind,
    tok: Tokenizer,
    held: Vec<u8>,
    passing: bool,
}

/// The ids of one answer: what seals them, and those known so far.
#[derive(Debug)]
struct Ids {
    sealer: Sealer,
    key: String,
    /// Provider name and backend address of the answering replica (known at the header).
    replica: Option<(String, SocketAddr)>,
    /// From the request, or sealed when first seen.
    known: Vec<Known>,
}

/// A backend id and the id the client sees, with the quoted forms a splice replaces (built
/// once, not for every event).
#[derive(Debug)]
struct Known {
    backend: String,
    client: String,
    quoted_backend: memchr::memmem::Finder<'static>,
    quoted_client: Vec<u8>,
}

impl IdRewrite {
    fn new(sealer: Sealer, key: String) -> Self {
        IdRewrite {
            ids: Ids { sealer, key, replica: None, known: Vec::new() },
            mode: BodyKind::Other,
            tok: Tokenizer::default(),
            held: Vec::new(),
            passing: false,
        }
    }

    /// In `response_filter`: only 2xx JSON or SSE answers change, and lose their length.
    pub fn response_header(
        &mut self,
        resp: &mut ResponseHeader,
        kind: BodyKind,
        replica: Option<(String, SocketAddr)>,
    ) -> pingora::Result<()> {
        if !resp.status.is_success() || kind == BodyKind::Other || replica.is_none() {
            return Ok(());
        }
        self.mode = kind;
        self.ids.replica = replica;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        Ok(())
    }

    pub fn response_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        match self.mode {
            BodyKind::Other => {}
            BodyKind::Json => self.json(body, end),
            BodyKind::Sse => self.sse(body, end),
        }
    }

    fn json(&mut self, body: &mut Option<Bytes>, end: bool) {
        if self.passing {
            return;
        }
        if let Some(c) = body.take() {
            self.held.extend_from_slice(&c);
        }
        if self.held.len() > MAX_HELD {
            self.passing = true;
            *body = Some(Bytes::from(std::mem::take(&mut self.held)));
        } else if end {
            let held = std::mem::take(&mut self.held);
            self.ids.learn(&held);
            let mut out = Vec::with_capacity(held.len() + 64);
            self.ids.splice_into(&held, &mut out);
            *body = Some(Bytes::from(out));
        }
    }

    /// Events pass whole: ids are learned from the `data` lines that name a response
    /// (`response.created`, `.completed`, …) as the tokenizer yields them, then each event
    /// ended in this chunk is spliced, straight from the chunk unless it began in an earlier one.
    fn sse(&mut self, body: &mut Option<Bytes>, end: bool) {
        let chunk = body.take().unwrap_or_default();
        let mut ends = Vec::new();
        let ids = &mut self.ids;
        self.tok.feed(&chunk, |t, at| match t {
            Token::Line { text, .. } => {
                if let Some(data) = crate::sse::field(text, b"data") {
                    if memchr::memmem::find(data, b"\"response\"").is_some() {
                        ids.learn(data);
                    }
                }
            }
            Token::Blank { .. } => ends.push(at),
            Token::LongLine | Token::CrLfTail => {}
        });
        let mut out = Vec::with_capacity(chunk.len() + 64);
        let mut start = 0;
        for at in ends {
            if self.held.is_empty() {
                self.ids.splice_into(&chunk[start..at], &mut out);
            } else {
                self.held.extend_from_slice(&chunk[start..at]);
                let event = std::mem::take(&mut self.held);
                self.ids.splice_into(&event, &mut out);
            }
            start = at;
        }
        self.held.extend_from_slice(&chunk[start..]);
        if end || self.held.len() > MAX_HELD {
            out.append(&mut self.held);
        }
        *body = (!out.is_empty()).then(|| Bytes::from(out));
    }
}

impl Ids {
    /// Seals the response ids a JSON document names that are not known yet.
    fn learn(&mut self, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Named {
            id: Option<String>,
            previous_response_id: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Doc {
            id: Option<String>,
            previous_response_id: Option<String>,
            response: Option<Named>,
        }
        let Ok(doc) = serde_json::from_slice::<Doc>(json) else { return };
        let inner = doc.response.map(|r| [r.id, r.previous_response_id]).unwrap_or_default();
        for id in [doc.id, doc.previous_response_id].into_iter().chain(inner).flatten() {
            self.seal(id);
        }
    }

    fn seal(&mut self, backend_id: String) {
        let plain = backend_id.starts_with(ID_PREFIX)
            && backend_id.len() <= 256
            && backend_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain || self.known.iter().any(|k| k.backend == backend_id || k.client == backend_id) {
            return;
        }
        let Some((provider, addr)) = self.replica.clone() else { return };
        let pin =
            Pinned { provider, backend: addr, token: format!("{TOKEN_PREFIX}{backend_id}"), key: self.key.clone() };
        let client = format!("{ID_PREFIX}{}", self.sealer.seal(&pin));
        self.remember(backend_id, client);
    }

    fn remember(&mut self, backend: String, client: String) {
        let quoted_backend = memchr::memmem::Finder::new(format!("\"{backend}\"").as_bytes()).into_owned();
        let quoted_client = format!("\"{client}\"").into_bytes();
        self.known.push(Known { backend, client, quoted_backend, quoted_client });
    }

    /// `bytes` onto `out`, every quoted occurrence of a known backend id replaced by the
    /// client's id.
    fn splice_into(&self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut hits = self.known.iter().filter(|k| k.quoted_backend.find(bytes).is_some());
        let Some(first) = hits.next() else {
            out.extend_from_slice(bytes);
            return;
        };
        let mut current = replace(bytes, first);
        for k in hits {
            current = replace(&current, k);
        }
        out.extend_from_slice(&current);
    }
}

/// `bytes` with every occurrence of `k`'s quoted backend id replaced by its quoted client id.
fn replace(bytes: &[u8], k: &Known) -> Vec<u8> {
    let from = k.quoted_backend.needle().len();
    let mut next = Vec::with_capacity(bytes.len() + k.quoted_client.len());
    let mut at = 0;
    for hit in k.quoted_backend.find_iter(bytes) {
        next.extend_from_slice(&bytes[at..hit]);
        next.extend_from_slice(&k.quoted_client);
        at = hit + from;
    }
    next.extend_from_slice(&bytes[at..]);
    next
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rw() -> IdRewrite {
        let mut r = IdRewrite::new(Sealer::new([3; 32]), "alice".into());
        r.ids.replica = Some(("vllm".into(), "127.0.0.1:9".parse().unwrap()));
        r
    }

    #[test]
    fn calls_from_paths() {
        let post = http::Method::POST;
        assert_eq!(call("/v1/responses", &post), Some(Call::Create));
        assert_eq!(call("/v1/responses", &http::Method::GET), None);
        assert_eq!(call("/x/v1/responses/resp_a/cancel", &post), Some(Call::ById("resp_a".into())));
        assert_eq!(call("/v1/responses/resp_a", &http::Method::GET), Some(Call::ById("resp_a".into())));
        assert_eq!(call("/v1/chat/completions", &post), None);
        assert_eq!(call("/responses", &post), None);
    }

    #[test]
    fn previous_id_span() {
        let body = br#"{"model":"m", "previous_response_id" : "resp_x1","input":"hi"}"#;
        let (r, id) = previous_id(body).unwrap();
        assert_eq!(&body[r], b"\"resp_x1\"");
        assert_eq!(id, "resp_x1");
        assert!(previous_id(br#"{"previous_response_id":null}"#).is_none());
        assert!(previous_id(br#"{"input":"x"}"#).is_none());
    }

    #[test]
    fn json_ids_are_sealed_and_open_to_the_replica() {
        let mut r = rw();
        r.ids.remember("resp_prev".into(), "resp_CLIENT".into());
        r.mode = BodyKind::Json;
        let answer = br#"{"id":"resp_new","previous_response_id":"resp_prev","output":[{"id":"msg_1"}]}"#;
        let mut out = Some(Bytes::from_static(answer));
        r.response_body(&mut out, true);
        let out = out.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["previous_response_id"], "resp_CLIENT");
        assert_eq!(v["output"][0]["id"], "msg_1");
        let sealed = v["id"].as_str().unwrap().strip_prefix(ID_PREFIX).unwrap();
        let pin = r.ids.sealer.open(sealed).unwrap();
        assert_eq!(
            (pin.token.as_str(), pin.key.as_str(), pin.provider.as_str()),
            ("response:resp_new", "alice", "vllm")
        );
    }

    #[test]
    fn sse_events_split_across_chunks() {
        let mut r = rw();
        r.mode = BodyKind::Sse;
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\"}}\n\nevent: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\nevent: response.completed\ndata: {\"response\":{\"id\":\"resp_9\",\"usage\":{}}}\n\n";
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            let mut b = Some(Bytes::copy_from_slice(piece));
            r.response_body(&mut b, false);
            out.extend_from_slice(&b.unwrap_or_default());
        }
        let mut b = None;
        r.response_body(&mut b, true);
        out.extend_from_slice(&b.unwrap_or_default());
        let text = String::from_utf8(out).unwrap();
        // Quoted: the sealed id is `resp_` and base64, which may itself begin with a 9.
        assert!(!text.contains("\"resp_9\""), "{text}");
        assert_eq!(text.matches(&r.ids.known[0].client).count(), 2, "{text}");
        assert!(text.contains("data: {\"delta\":\"hi\"}\n\n"));
    }
}
