//! Route: match the path, read a JSON body (bounded) to learn `model` and `stream`, check the
//! key may use the model, pick the provider, and decide how the body reaches the upstream.

use super::ctx::Routed;
use super::rewrite;
use crate::auth::KeyEntry;
use crate::error::GatewayError;
use crate::routes::Target;
use crate::runtime::Runtime;
use crate::upstream::hash_key::{key_for, KeyInputs};
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;

/// Pingora replays a body read in `request_filter` only from its retry buffer, which holds
/// 64 KiB (`BODY_BUF_LIMIT` in pingora-core); larger bodies go through a subrequest pipe.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// How the request body reaches the upstream.
pub enum BodyPlan {
    /// Not read (no body, or not JSON): Pingora streams it.
    Untouched,
    /// Read whole and small: Pingora replays it from its retry buffer (the bytes are kept for
    /// the heartbeat relay, which replays them itself).
    Replay(Vec<Bytes>),
    /// Read whole and too large to replay: hand these bytes to a subrequest.
    Pipe(Vec<Bytes>),
}

/// The fields of an OpenAI request body the gateway needs; everything else is skipped.
#[derive(serde::Deserialize, Default)]
struct Peek {
    /// OpenAI's end-user id (a hash key source); kept raw so an odd type is not an error.
    user: Option<Box<RawValue>>,
    /// Only the first system and first user messages are kept (see [`FirstMessages`]).
    #[serde(default)]
    messages: FirstMessages,
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

pub struct Decision {
    pub routed: Routed,
    pub body: BodyPlan,
}

pub struct RequestMeta {
    pub request_id: String,
    pub started: Instant,
    pub client_ip: Option<String>,
    pub client_proto: &'static str,
}

pub async fn decide(
    session: &mut Session,
    rt: &Arc<Runtime>,
    key: Arc<KeyEntry>,
    meta: RequestMeta,
) -> Result<Result<Decision, GatewayError>> {
    let path = session.req_header().uri.path().to_string();
    let Some(route) = rt.routes.find(&path) else {
        return Ok(Err(GatewayError::NotFound(safe_path(&path))));
    };
    let route_label = route.label.clone();
    let (mut plan, mut peek, mut body_len, mut new_body) = (BodyPlan::Untouched, Peek::default(), None, None);
    // MCP bodies are JSON-RPC for the backend only (batches are arrays): never parsed here.
    let mcp = route.opts.kind == crate::routes::RouteKind::Mcp;
    if !mcp && wants_json_read(session) {
        let body = match read_body(session, rt.server.max_body).await? {
            Ok(chunks) => chunks,
            Err(e) => return Ok(Err(e)),
        };
        let len: usize = body.iter().map(Bytes::len).sum();
        if len > 0 {
            peek = match parse_peek(&body, len) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
        }
        let asked_usage = peek.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let added_usage = (peek.stream == Some(true) && !asked_usage).then(|| rewrite::with_include_usage(&body));
        plan = match added_usage.flatten() {
            // Small: Pingora replays the retry buffer through `request_body_filter`, which
            // swaps in the new body. Large: the new body goes through the subrequest pipe.
            Some(new) => {
                body_len = Some(new.len());
                if len > RETRY_BUFFER_LIMIT {
                    BodyPlan::Pipe(vec![new])
                } else {
                    new_body = Some(new.clone());
                    BodyPlan::Replay(vec![new])
                }
            }
            None if len > RETRY_BUFFER_LIMIT => BodyPlan::Pipe(body),
            None => BodyPlan::Replay(body),
        };
    }
    if let Some(model) = &peek.model {
        if !key.models.allows(model) {
            return Ok(Err(GatewayError::ModelNotAllowed(model.clone())));
        }
    }
    let provider = match (&route.target, &peek.model) {
        (Target::Provider(i), _) => rt.providers.get(*i).cloned(),
        (Target::ByModel, Some(model)) => match rt.provider_for_model(model) {
            Some(p) => Some(p.clone()),
            None => return Ok(Err(GatewayError::ModelNotFound(model.clone()))),
        },
        // No model in the request (GET /v1/models, …): the first provider answers.
        (Target::ByModel, None) => rt.providers.first().cloned(),
    };
    let Some(provider) = provider else {
        return Ok(Err(GatewayError::Unavailable("no provider is configured for this route".into())));
    };
    // Every backend down or open: a fallback, or 503 at once rather than waiting on timeouts.
    let Some(provider) = rt.serving(&provider) else {
        return Ok(Err(GatewayError::Unavailable(format!("every backend of provider {:?} is down", provider.name))));
    };
    let fingerprint = peek.prefix_fingerprint();
    let inputs = KeyInputs {
        headers: &session.req_header().headers,
        key_name: &key.name,
        user: peek.user(),
        prefix: fingerprint.as_ref().map(|f| f.as_slice()),
        client_ip: meta.client_ip.as_deref(),
    };
    // No source present: a random key spreads such requests like round robin would.
    let hash_key =
        key_for(&provider.fleet.hash_key, &inputs).unwrap_or_else(|| rand::random::<u64>().to_le_bytes().to_vec());
    let stripped = match route.strip_for(&provider.base_path) {
        Some(prefix) => path.strip_prefix(prefix).unwrap_or(&path).to_string(),
        None => path.clone(),
    };
    let mut upstream_path = provider.upstream_path(&stripped);
    if let Some(q) = session.req_header().uri.query() {
        upstream_path.push('?');
        upstream_path.push_str(q);
    }
    let streams = super::streams::RouteStreams::new(route, &provider);
    let routed = Routed {
        runtime: rt.clone(),
        request_id: meta.request_id,
        started: meta.started,
        key,
        route_label,
        provider,
        hash_key,
        upstream_path,
        model: peek.model,
        stream: peek.stream.unwrap_or(false),
        client_ip: meta.client_ip,
        client_proto: meta.client_proto,
        strip_usage: body_len.is_some(),
        body_len,
        new_body,
        streams,
    };
    Ok(Ok(Decision { routed, body: plan }))
}

/// POST/PUT/PATCH bodies are read as JSON, except uploads (`multipart/*`, octet streams), which
/// stream through untouched. (`curl -d` labels JSON as form data, so that counts as JSON.)
fn wants_json_read(session: &Session) -> bool {
    let req = session.req_header();
    if !matches!(req.method, http::Method::POST | http::Method::PUT | http::Method::PATCH) {
        return false;
    }
    match req.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            !(ct.starts_with("multipart/") || ct.starts_with("application/octet-stream"))
        }
    }
}

/// Reads the whole body, refusing more than `max` bytes (by Content-Length before reading).
async fn read_body(session: &mut Session, max: u64) -> Result<Result<Vec<Bytes>, GatewayError>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(Err(GatewayError::PayloadTooLarge(max)));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    session.enable_retry_buffering();
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len() as u64;
        if total > max {
            return Ok(Err(GatewayError::PayloadTooLarge(max)));
        }
        chunks.push(chunk);
    }
    Ok(Ok(chunks))
}

fn parse_peek(chunks: &[Bytes], len: usize) -> Result<Peek, GatewayError> {
    let parsed = if chunks.len() == 1 {
        serde_json::from_slice::<Peek>(&chunks[0])
    } else {
        let mut all = Vec::with_capacity(len);
        for c in chunks {
            all.extend_from_slice(c);
        }
        serde_json::from_slice::<Peek>(&all)
    };
    parsed.map_err(|e| GatewayError::InvalidJson(e.to_string()))
}

/// The path for an error message: bounded, printable, no query (it may hold a key).
fn safe_path(path: &str) -> String {
    path.chars().filter(|c| c.is_ascii_graphic()).take(200).collect()
}

/// The raw `content` of the first system and the first user message, for the prefix
/// fingerprint: in a multi-turn chat they stay the same while the history grows.
#[derive(Default)]
struct FirstMessages {
    system: Option<Box<RawValue>>,
    user: Option<Box<RawValue>>,
}

impl<'de> serde::Deserialize<'de> for FirstMessages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FirstMessages;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<FirstMessages, A::Error> {
                #[derive(serde::Deserialize)]
                struct Msg {
                    role: Option<String>,
                    content: Option<Box<RawValue>>,
                }
                let mut out = FirstMessages::default();
                while out.system.is_none() || out.user.is_none() {
                    let Some(m) = seq.next_element::<Msg>()? else { return Ok(out) };
                    let slot = match m.role.as_deref() {
                        Some("system" | "developer") => &mut out.system,
                        Some("user") => &mut out.user,
                        _ => continue,
                    };
                    if slot.is_none() {
                        *slot = m.content;
                    }
                }
                // Both found: skip the rest of the history without keeping it.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

impl Peek {
    /// SHA-256 of the model and the first system and user messages; `None` without a user
    /// message (nothing conversation-like to keep together).
    fn prefix_fingerprint(&self) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let user = self.messages.user.as_ref()?;
        let mut h = Sha256::new();
        h.update(self.model.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(self.messages.system.as_ref().map(|s| s.get()).unwrap_or("").as_bytes());
        h.update([0]);
        h.update(user.get().as_bytes());
        Some(h.finalize().into())
    }

    /// `user` as text: a JSON string's value, else the raw JSON.
    fn user(&self) -> Option<&str> {
        let raw = self.user.as_ref()?.get();
        Some(raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek(body: &str) -> Peek {
        parse_peek(&[Bytes::from(body.to_string())], body.len()).unwrap()
    }

    #[test]
    fn prefix_fingerprint_follows_the_conversation_start() {
        let turn1 = r#"{"model":"m","user":"u1","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
        let turn2 = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}],"model":"m"}"#;
        let other =
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"bye"}]}"#;
        let (a, b, c) = (peek(turn1), peek(turn2), peek(other));
        assert_eq!(a.prefix_fingerprint(), b.prefix_fingerprint());
        assert_ne!(a.prefix_fingerprint(), c.prefix_fingerprint());
        assert_eq!(a.user(), Some("u1"));
        assert_eq!(b.model.as_deref(), Some("m"));
        assert!(peek(r#"{"model":"m","prompt":"x"}"#).prefix_fingerprint().is_none());
        let parts = peek(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true}"#);
        assert!(parts.prefix_fingerprint().is_some());
        assert_eq!(parts.stream, Some(true));
    }
}
