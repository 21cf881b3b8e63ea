//! The few places the gateway changes a body, each exact and bounded:
//! - a streamed completion that did not ask for `stream_options.include_usage` gets it added
//!   (so tokens can be counted), and the extra usage event is removed from the response
//!   before the client sees it — every other byte is passed on unchanged;
//! - `GET …/models` lists only the models the key may use.

use super::stream::BodyKind;
use crate::auth::ModelGlobs;
use crate::error::GatewayError;
use crate::sse;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::Value;

/// An event or models list larger than this is passed on (events) or refused (lists) whole.
const MAX_HELD: usize = 4 << 20;

/// What the response body filter does for this request.
#[derive(Debug, Default)]
pub enum ResponseRewrite {
    #[default]
    None,
    StripUsage(SseStrip),
    Models(ModelsFilter),
}

impl ResponseRewrite {
    /// In `response_filter`: a body that will change length loses its `Content-Length`.
    pub fn response_header(&mut self, resp: &mut ResponseHeader, kind: BodyKind) -> pingora::Result<()> {
        let changes_length = match self {
            ResponseRewrite::None => false,
            ResponseRewrite::StripUsage(_) => kind == BodyKind::Sse,
            ResponseRewrite::Models(f) => {
                f.active = resp.status == 200;
                f.active
            }
        };
        if changes_length {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    /// In `response_body_filter`, after the usage observer saw the original bytes.
    pub fn response_body(&mut self, body: &mut Option<Bytes>, end: bool, kind: BodyKind) {
        match self {
            ResponseRewrite::None => {}
            ResponseRewrite::StripUsage(s) if kind == BodyKind::Sse => s.filter(body, end),
            ResponseRewrite::StripUsage(_) => {}
            ResponseRewrite::Models(f) => f.filter(body, end),
        }
    }
}

/// A request whose body was rewritten is framed by its new length.
pub fn set_body_length(req: &mut RequestHeader, len: usize) -> pingora::Result<()> {
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.insert_header(http::header::CONTENT_LENGTH, len.to_string())
}

/// The request body with `stream_options.include_usage: true`, or `None` when it is not a
/// JSON object (then it is forwarded unchanged and usage may be unknown).
pub fn with_include_usage(chunks: &[Bytes]) -> Option<Bytes> {
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(c);
    }
    let mut v: Value = serde_json::from_slice(&all).ok()?;
    let obj = v.as_object_mut()?;
    let opts = obj.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
    if !opts.is_object() {
        *opts = Value::Object(Default::default());
    }
    opts.as_object_mut()?.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Removes the one SSE event whose JSON has `"choices": []` and a `usage` object. Events can
/// span chunks: the unfinished tail of a chunk is held until its event ends (bounded).
#[derive(Debug, Default)]
pub struct SseStrip {
    held: Vec<u8>,
    pub removed: bool,
}

impl SseStrip {
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool) {
        if self.removed && self.held.is_empty() {
            return; // only one usage event per stream: the rest passes untouched
        }
        let chunk = body.take().unwrap_or_default();
        // Fast path: whole events and no usage in sight.
        if self.held.is_empty() && (chunk.is_empty() || ends_event(&chunk)) && !sse::contains(&chunk, b"\"usage\"") {
            *body = (!chunk.is_empty()).then_some(chunk);
            return;
        }
        self.held.extend_from_slice(&chunk);
        let mut out = Vec::with_capacity(self.held.len());
        let mut rest: &[u8] = &self.held;
        while let Some(end_at) = sse::event_len(rest) {
            let (event, tail) = rest.split_at(end_at);
            if !self.removed && is_usage_event(event) {
                self.removed = true;
            } else {
                out.extend_from_slice(event);
            }
            rest = tail;
        }
        if end || rest.len() > MAX_HELD {
            out.extend_from_slice(rest);
            rest = &[];
        }
        self.held = rest.to_vec();
        *body = (!out.is_empty()).then(|| Bytes::from(out));
    }
}

fn ends_event(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n")
}

fn is_usage_event(event: &[u8]) -> bool {
    if !sse::contains(event, b"\"usage\"") {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde::de::IgnoredAny>,
    }
    let mut data = Vec::new();
    for line in event.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(p) = line.strip_prefix(b"data:") {
            data.extend_from_slice(p.strip_prefix(b" ").unwrap_or(p));
        }
    }
    match serde_json::from_slice::<Chunk>(&data) {
        Ok(c) => c.usage.is_some() && c.choices.is_some_and(|v| v.is_empty()),
        Err(_) => false,
    }
}

/// `GET …/models`: filter the list the upstream returns. `GET …/models/{id}` of a model the
/// key may not use: refused like a completion for it would be.
pub fn models_request(req: &RequestHeader, globs: &ModelGlobs) -> Result<Option<ModelsFilter>, GatewayError> {
    if req.method != http::Method::GET {
        return Ok(None);
    }
    let path = req.uri.path();
    if path.ends_with("/models") {
        return Ok(Some(ModelsFilter::new(globs.clone())));
    }
    match path.rsplit_once("/models/") {
        Some((_, id)) if !id.is_empty() && !globs.allows(id) => Err(GatewayError::ModelNotAllowed(id.to_string())),
        _ => Ok(None),
    }
}

/// Buffers a `/models` list and keeps the entries whose `id` the key's globs allow.
#[derive(Debug)]
pub struct ModelsFilter {
    globs: ModelGlobs,
    buf: Vec<u8>,
    overflow: bool,
    /// Set once the response turned out to be a JSON 200 worth filtering.
    pub active: bool,
}

impl ModelsFilter {
    pub fn new(globs: ModelGlobs) -> Self {
        ModelsFilter { globs, buf: Vec::new(), overflow: false, active: false }
    }

    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool) {
        if !self.active {
            return;
        }
        if let Some(b) = body.take() {
            if self.buf.len() + b.len() > MAX_HELD {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(&b);
            }
        }
        if end {
            // Too large to check: say nothing rather than list models the key may not use.
            let out = if self.overflow { br#"{"object":"list","data":[]}"#.to_vec() } else { self.filtered() };
            *body = Some(Bytes::from(out));
        }
    }

    fn filtered(&self) -> Vec<u8> {
        let Ok(mut v) = serde_json::from_slice::<Value>(&self.buf) else { return self.buf.clone() };
        if let Some(list) = v.get_mut("data").and_then(Value::as_array_mut) {
            list.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(|id| self.globs.allows(id)));
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> (String, bool) {
        let mut s = SseStrip::default();
        let mut out = String::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Some(Bytes::copy_from_slice(c.as_bytes()));
            s.filter(&mut b, i + 1 == chunks.len());
            if let Some(b) = b {
                out.push_str(std::str::from_utf8(&b).unwrap());
            }
        }
        (out, s.removed)
    }

    const TOK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn removes_only_the_usage_event_even_when_split() {
        let whole = format!("{TOK}{USAGE}{DONE}");
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            let (out, removed) = run(&[a, b]);
            assert_eq!(out, format!("{TOK}{DONE}"), "cut at {cut}");
            assert!(removed);
        }
        let crlf = whole.replace('\n', "\r\n");
        let (out, _) = run(&[&crlf]);
        assert_eq!(out, format!("{TOK}{DONE}").replace('\n', "\r\n"));
    }

    #[test]
    fn streams_without_usage_pass_unchanged() {
        let (out, removed) = run(&[TOK, "data: {\"choices\":[{\"de", "lta\":{}}]}\n\n", DONE]);
        assert_eq!(out, format!("{TOK}data: {{\"choices\":[{{\"delta\":{{}}}}]}}\n\n{DONE}"));
        assert!(!removed);
        let (out, _) = run(&["data: unterminated"]);
        assert_eq!(out, "data: unterminated");
    }

    #[test]
    fn include_usage_is_added() {
        let b = with_include_usage(&[Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{}}"#)]);
        let v: Value = serde_json::from_slice(&b.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(with_include_usage(&[Bytes::from_static(b"[1]")]).is_none());
    }

    #[test]
    fn models_are_filtered() {
        let mut f = ModelsFilter::new(ModelGlobs(vec!["a*".into()]));
        f.active = true;
        let mut b = Some(Bytes::from_static(br#"{"object":"list","data":[{"id":"ab"},"#));
        f.filter(&mut b, false);
        assert!(b.is_none());
        let mut b = Some(Bytes::from_static(br#"{"id":"b"}]}"#));
        f.filter(&mut b, true);
        let v: Value = serde_json::from_slice(&b.unwrap()).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        assert_eq!(v["data"][0]["id"], "ab");
    }
}
