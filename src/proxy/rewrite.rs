//! The few places the gateway changes a body, each exact and bounded:
//! - a streamed completion that did not ask for `stream_options.include_usage` gets it added
//!   (so tokens can be counted), and the extra usage event is removed from the response
//!   before the client sees it — every other byte is passed on unchanged;
//! - a request that names no model gets the `default_model` it was checked for;
//! - `GET …/models` lists only the models the key may use (see `models_list`).

use super::usage::{BodyKind, ChunkHint};
use crate::keys::ModelGlobs;
use crate::request_body::Spans;
use crate::sse::{self, Token, Tokenizer};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::Value;
use std::ops::Range;

/// An event larger than this is passed on whole, unchecked.
const MAX_HELD: usize = 4 << 20;

/// What the response body filter does for this request.
#[derive(Debug, Default)]
pub enum ResponseRewrite {
    #[default]
    None,
    StripUsage(SseStrip),
}

impl ResponseRewrite {
    /// In `response_filter`: a body that will change length loses its `Content-Length`.
    pub fn response_header(&mut self, resp: &mut ResponseHeader, kind: BodyKind) -> pingora::Result<()> {
        let changes_length = match self {
            ResponseRewrite::None => false,
            ResponseRewrite::StripUsage(_) => kind == BodyKind::Sse,
        };
        if changes_length {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    /// In `response_body_filter`, after the usage observer saw the original bytes;
    /// `hint` is what the observer returned for them.
    pub fn response_body(&mut self, body: &mut Option<Bytes>, end: bool, kind: BodyKind, hint: ChunkHint) {
        match self {
            ResponseRewrite::None => {}
            ResponseRewrite::StripUsage(s) if kind == BodyKind::Sse => s.filter(body, end, hint),
            ResponseRewrite::StripUsage(_) => {}
        }
    }
}

/// A request whose body was rewritten is framed by its new length.
pub fn set_body_length(req: &mut RequestHeader, len: usize) -> pingora::Result<()> {
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.insert_header(http::header::CONTENT_LENGTH, len.to_string())
}

/// The JSON request body with `model` set (a default the request did not name) and/or
/// `stream_options.include_usage: true`; `None` when nothing is to change. The body is
/// spliced, never re-serialised: every byte the client sent is forwarded as it came, and the
/// gateway's additions are whole members (or a replaced value) at positions the scanner
/// recorded ([`Spans`]), so the result is valid JSON whenever the scanned body was.
pub fn json_body(body: &[u8], spans: &Spans, set_model: Option<&str>, include_usage: bool) -> Option<Bytes> {
    if set_model.is_none() && !include_usage {
        return None;
    }
    // (range replaced, replacement), disjoint; members added after the top-level `{`.
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(3);
    let mut members: Vec<u8> = Vec::new();
    let mut add_member = |m: &[u8]| {
        if !members.is_empty() {
            members.push(b',');
        }
        members.extend_from_slice(m);
    };
    if let Some(m) = set_model {
        let quoted = serde_json::to_vec(m).ok()?;
        match &spans.model {
            // `"model": null` or `""`: the value is replaced.
            Some(r) => edits.push((r.clone(), quoted)),
            None => add_member(&[&b"\"model\":"[..], &quoted].concat()),
        }
    }
    if include_usage {
        const OBJECT: &[u8] = b"{\"include_usage\":true}";
        match &spans.stream_options {
            None => add_member(&[&b"\"stream_options\":"[..], OBJECT].concat()),
            Some(r) => {
                let value = body.get(r.clone())?;
                let empty =
                    value.first() == Some(&b'{') && value[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
                match (&spans.include_usage, value.first()) {
                    // `false` or `null`: the value is replaced.
                    (Some(u), Some(b'{')) => edits.push((u.clone(), b"true".to_vec())),
                    (None, Some(b'{')) if !empty => {
                        edits.push((r.start + 1..r.start + 1, b"\"include_usage\":true,".to_vec()))
                    }
                    // `{}`, `null` or not an object at all: replaced by the object.
                    _ => edits.push((r.clone(), OBJECT.to_vec())),
                }
            }
        }
    }
    if !members.is_empty() {
        if spans.has_members {
            members.push(b',');
        }
        edits.push((spans.open..spans.open, members));
    }
    edits.sort_by_key(|(r, _)| r.start);
    let grown: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grown);
    let mut at = 0;
    for (r, v) in edits {
        out.extend_from_slice(body.get(at..r.start)?);
        out.extend_from_slice(&v);
        at = r.end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(Bytes::from(out))
}

/// Removes the one SSE event whose JSON has `"choices": []` and a `usage` object. Events can
/// span chunks: the unfinished event is held until it ends (bounded); events are found by
/// the one SSE tokenizer, so LF, CRLF and bare CR streams are handled alike.
#[derive(Debug, Default)]
pub struct SseStrip {
    tok: Tokenizer,
    /// Raw bytes of the event in progress.
    held: Vec<u8>,
    /// The event in progress outgrew `MAX_HELD`: it passes on unchecked until it ends.
    passing: bool,
    /// The last event ended was the removed one: an LF completing its final CR LF goes too.
    last_removed: bool,
    pub removed: bool,
}

impl SseStrip {
    /// `hint`: where the chunk's first `"usage"` key is, as [`sse::find_usage_key`] gives it,
    /// and the usage line the observer read (the usage observer read the same bytes).
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool, hint: ChunkHint) {
        if self.removed && self.held.is_empty() && !self.last_removed {
            return; // only one usage event per stream: the rest passes untouched
        }
        let chunk = body.take().unwrap_or_default();
        // Where `"usage"` first appears in the chunk: one search, not one per event.
        let mut key = hint.key;
        // Whole events, the tokenizer's state unchanged by them: no usage in sight, or the
        // usage event alone in its chunk (the usual usage chunk) with its data line read by the
        // observer, removed whole. Neither is split into lines again.
        let whole = if self.held.is_empty() { self.tok.whole_events(&chunk) } else { None };
        if let Some(events) = whole {
            if key.is_none() {
                *body = Some(chunk);
                return;
            }
            if !self.removed && !self.passing && lone_usage_event(events, hint) {
                self.removed = true;
                self.last_removed = true;
                return;
            }
        } else if chunk.is_empty() && self.held.is_empty() && self.tok.at_clean_boundary() {
            return;
        }
        // What goes on: the held bytes of an event that ends in this chunk, then ranges of the
        // chunk itself (one range, passed on without a copy, unless an event was removed).
        let mut out = Pieces::default();
        let SseStrip { tok, held, passing, last_removed, removed } = self;
        // Bytes of the chunk before `start` are placed: passed on, removed or held.
        let mut start = 0;
        tok.feed(&chunk, |t, at| match t {
            // The LF of the previous event's last CR LF: it goes where that event went.
            Token::CrLfTail if held.is_empty() => {
                if !*last_removed {
                    out.range(start..at);
                }
                *last_removed = false;
                start = at;
            }
            Token::Blank { .. } => {
                // The event that ends here: held bytes from earlier chunks, then these.
                if !held.is_empty() {
                    held.extend_from_slice(&chunk[start..at]);
                }
                let drop = if *removed || *passing {
                    false
                } else if held.is_empty() {
                    // The event lies in this chunk: checked only if `"usage"` is inside it.
                    if key.is_some_and(|k| k < start) {
                        key = sse::find_usage_key(&chunk, start);
                    }
                    key.is_some_and(|k| k < at) && usage_event_verdict(&chunk[start..at], start, hint.walked)
                } else {
                    is_usage_event(held)
                };
                if drop {
                    *removed = true;
                    held.clear();
                } else if held.is_empty() {
                    out.range(start..at);
                } else {
                    out.lead(held);
                }
                *last_removed = drop;
                *passing = false;
                start = at;
            }
            _ => *last_removed = false,
        });
        // The event still open at the chunk's end is held, unless the stream ends or it is
        // passing on unchecked.
        let open = start..chunk.len();
        if held.is_empty() && (end || *passing || open.len() > MAX_HELD) {
            *passing = !end;
            out.range(open);
        } else {
            held.extend_from_slice(&chunk[open]);
            if end || *passing || held.len() > MAX_HELD {
                *passing = !end;
                out.lead(held);
            }
        }
        *body = out.into_body(&chunk);
    }
}

/// The output of one [`SseStrip::filter`] call: held bytes first, then ranges of the chunk.
#[derive(Default)]
struct Pieces {
    lead: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Pieces {
    fn range(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        match self.ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => self.ranges.push(r),
        }
    }

    /// Moves `held` out (it is emptied).
    fn lead(&mut self, held: &mut Vec<u8>) {
        if self.lead.is_empty() {
            std::mem::swap(&mut self.lead, held);
        } else {
            self.lead.append(held);
        }
    }

    fn into_body(self, chunk: &Bytes) -> Option<Bytes> {
        match (self.lead.is_empty(), self.ranges.as_slice()) {
            (true, []) => None,
            (true, [r]) => Some(chunk.slice(r.clone())),
            _ => {
                let mut out = self.lead;
                for r in &self.ranges {
                    out.extend_from_slice(&chunk[r.clone()]);
                }
                Some(Bytes::from(out))
            }
        }
    }
}

/// Whether the chunk is one event, `data:` (an optional space) and the data that the observer
/// walked and found to be the usage chunk ([`ChunkHint::walked`]), then its blank line: what
/// [`usage_event_verdict`] would drop after the tokenizer split it.
fn lone_usage_event(events: sse::WholeEvents<'_>, hint: ChunkHint) -> bool {
    let Some((start, len, Some(true))) = hint.walked else { return false };
    events
        .only_line()
        .is_some_and(|line| start + len == line.len() && sse::field(line, b"data").is_some_and(|d| d.len() == len))
}

fn is_usage_event(event: &[u8]) -> bool {
    sse::contains_usage_key(event) && usage_event_verdict(event, 0, None)
}

/// [`is_usage_event`] for an event known to hold a usage key; `at` is where the event starts
/// in its chunk, `walked` the chunk's data line that the usage observer read
/// ([`ChunkHint::walked`]): when it is this event's data, its answer is taken, not walked again.
fn usage_event_verdict(event: &[u8], at: usize, walked: Option<(usize, usize, Option<bool>)>) -> bool {
    // The usual event is one `data:` line: read in place, and walked rather than parsed.
    let line = event.strip_suffix(b"\n").unwrap_or(event);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if memchr::memchr2(b'\n', b'\r', line).is_none() {
        if let Some(data) = sse::field(line, b"data") {
            // `data` ends the line: it starts this far into the event.
            let from = at + line.len() - data.len();
            let verdict = match walked {
                Some((start, len, verdict)) if start == from && len == data.len() => verdict,
                _ => super::usage::is_usage_chunk(data),
            };
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
    }
    is_usage_event_parsed(event)
}

/// [`is_usage_event`] by serde_json on the event's joined `data` lines.
fn is_usage_event_parsed(event: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde::de::IgnoredAny>,
    }
    let Some(data) = sse::event_data(event) else { return false };
    match serde_json::from_slice::<Chunk>(&data) {
        Ok(c) => c.usage.is_some() && c.choices.is_some_and(|v| v.is_empty()),
        Err(_) => false,
    }
}

/// A `/models` list (`{"data":[{"id":…},…]}`) with only the entries whose `id` the key's
/// globs allow; `None` when it is not such a list (the caller answers 502 rather than pass on
/// a list it could not filter).
pub fn filter_models(body: &[u8], globs: &ModelGlobs) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let list = v.as_object_mut()?.get_mut("data")?.as_array_mut()?;
    list.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(|id| globs.allows(id)));
    serde_json::to_vec(&v).ok()
}

/// A multipart form with a `model` field added as its last part; `None` when the form is
/// not one the scanner accepts.
pub fn multipart_with_model(chunks: &[Bytes], boundary: &str, model: &str) -> Option<Bytes> {
    let all = concat(chunks);
    let at = crate::request_body::close_offset(&all, boundary.as_bytes()).ok()?;
    let part = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n");
    let mut out = Vec::with_capacity(all.len() + part.len());
    out.extend_from_slice(&all[..at]);
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(&all[at..]);
    Some(Bytes::from(out))
}

fn concat(chunks: &[Bytes]) -> Vec<u8> {
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(c);
    }
    all
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
            s.filter(&mut b, i + 1 == chunks.len(), ChunkHint::key(sse::find_usage_key(c.as_bytes(), 0)));
            if let Some(b) = b {
                out.push_str(std::str::from_utf8(&b).unwrap());
            }
        }
        (out, s.removed)
    }

    /// [`run`] with the hints a usage observer gives for the same chunks (the gateway's order).
    fn run_observed(chunks: &[&str]) -> (String, bool) {
        let mut o = crate::proxy::usage::UsageObserver::default();
        o.start(Some("text/event-stream"));
        let mut s = SseStrip::default();
        let mut out = String::new();
        for (i, c) in chunks.iter().enumerate() {
            let bytes = Bytes::copy_from_slice(c.as_bytes());
            let hint = o.observe(Some(&bytes), false);
            let mut b = Some(bytes);
            s.filter(&mut b, i + 1 == chunks.len(), hint);
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
        for eol in ["\n", "\r\n", "\r"] {
            let whole = format!("{TOK}{USAGE}{DONE}").replace('\n', eol);
            let want = format!("{TOK}{DONE}").replace('\n', eol);
            assert_eq!(run(&[&whole]), (want.clone(), true), "{eol:?}");
            for cut in 1..whole.len() {
                let (a, b) = whole.split_at(cut);
                let (out, removed) = run(&[a, b]);
                assert_eq!(out, want, "{eol:?} cut at {cut}");
                assert!(removed);
            }
        }
    }

    /// Cut in three anywhere, with `"usage"` in other events before and after the usage event
    /// (a null usage, a comment, a second usage-shaped event): exactly the first usage event
    /// goes, every other byte passes, and the pieces joined are the stream minus that event.
    #[test]
    fn removes_the_usage_event_at_every_three_way_split() {
        let note = ": \"usage\" in a comment\n\n";
        for eol in ["\n", "\r\n", "\r"] {
            let whole = format!("{TOK}{note}{TOK}{USAGE}{USAGE}{DONE}").replace('\n', eol);
            let want = format!("{TOK}{note}{TOK}{USAGE}{DONE}").replace('\n', eol);
            for i in 0..=whole.len() {
                for j in (i..=whole.len()).step_by(5) {
                    let (out, removed) = run(&[&whole[..i], &whole[i..j], &whole[j..]]);
                    assert_eq!(out, want, "{eol:?} cut at {i} and {j}");
                    assert!(removed);
                    let observed = run_observed(&[&whole[..i], &whole[i..j], &whole[j..]]);
                    assert_eq!(observed, (want.clone(), true), "{eol:?} cut at {i} and {j}, observed");
                }
            }
        }
    }

    /// Every event in its own chunk (the usual stream), observed first as in the gateway: the
    /// usage event is removed as when its chunk is split into lines, and the rest passes.
    #[test]
    fn a_lone_usage_event_is_removed_as_when_split() {
        let comment = ": \"usage\"\n\n";
        let two_lines = "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":3}}\n\n";
        let spaced = "data:{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
        let cr = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\n";
        let not_usage = "data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":3}}\n\n";
        let twice = "data: {\"choices\":[],\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n";
        for eol in ["\n", "\r\n", "\r"] {
            let [tok, usage, done] = [TOK, USAGE, DONE].map(|e| e.replace('\n', eol));
            for events in [
                vec![&*tok, &*usage, &*done],
                vec![&*usage, &*usage, &*done],
                vec![&*tok, comment, &*usage],
                vec![&*tok, two_lines, &*usage, &*done],
                vec![&*tok, spaced, &*done],
                vec![&*tok, cr, &*usage, &*done],
                vec![&*tok, not_usage, &*usage, &*done],
                vec![&*tok, twice, &*usage, &*done],
                vec![&*usage],
                vec!["data: {\"choices\":[", "],\"usage\":{\"prompt_tokens\":3}}\n\n", &*usage],
            ] {
                assert_eq!(run_observed(&events), run(&events), "{eol:?} {events:?}");
            }
        }
    }

    /// A chunk of whole events without usage is passed on as the same bytes (no copy), and so is
    /// the part of a chunk before the usage event.
    #[test]
    fn passed_on_chunks_share_the_backends_bytes() {
        let mut s = SseStrip::default();
        let chunk = Bytes::from(format!("{TOK}{TOK}"));
        let mut b = Some(chunk.clone());
        s.filter(&mut b, false, ChunkHint::key(sse::find_usage_key(&chunk, 0)));
        assert_eq!(b.as_ref().map(|b| b.as_ptr()), Some(chunk.as_ptr()));
        let chunk = Bytes::from(format!("{TOK}{USAGE}"));
        let mut b = Some(chunk.clone());
        s.filter(&mut b, false, ChunkHint::key(sse::find_usage_key(&chunk, 0)));
        assert_eq!(b.as_deref(), Some(TOK.as_bytes()));
        assert_eq!(b.as_ref().map(|b| b.as_ptr()), Some(chunk.as_ptr()));
        assert!(s.removed);
    }

    #[test]
    fn the_walk_and_serde_agree_on_which_event_is_the_usage_event() {
        let events = [
            USAGE,
            TOK,
            DONE,
            "data: {\"choices\": [ ], \"usage\": {\"prompt_tokens\": 1}}\r\n\r\n",
            "data:{\"choices\":[],\"usage\":null}\n\n",
            "data: {\"choices\":null,\"usage\":{}}\n\n",
            "data: {\"choices\":[1],\"usage\":{}}\n\n",
            "data: {\"choices\":\"[]\",\"usage\":{}}\n\n",
            "data: {\"usage\":{},\"choices\":[]}\r\r",
            "data: {\"usage\":{}}\n\n",
            "data: {\"choices\":[],\"usage\":{},\"usage\":{}}\n\n",
            "data: {\"choices\":[],\n\"usage\":{}}\n\n",
            "data: {\"choices\":[],\ndata: \"usage\":{}}\n\n",
            "event: x\ndata: {\"choices\":[],\"usage\":{}}\n\n",
            "data: [\"usage\"]\n\n",
            "data: {\"choices\":[],\"usage\":{}} x\n\n",
            // `"usage"` then `:null` on a comment line: the data gives it another value.
            "data: {\"choices\":[],\"usage\"\n:null\ndata: :{\"prompt_tokens\":1}}\n\n",
            "data: {\"choices\":[],\"usage\" : null}\n\n",
        ];
        let mut stripped = 0;
        for e in events {
            let (fast, parsed) = (is_usage_event(e.as_bytes()), is_usage_event_parsed(e.as_bytes()));
            assert_eq!(fast, parsed, "{e:?}");
            // The same event after another, with the hint the observer gives for the chunk.
            let chunk = format!("{TOK}{e}");
            let (observed, _) = run_observed(&[&chunk]);
            let (plain, _) = run(&[&chunk]);
            assert_eq!(observed, plain, "{e:?}");
            assert_eq!(observed.len() == TOK.len(), fast, "{e:?}");
            stripped += usize::from(fast);
        }
        assert_eq!(stripped, 6);
    }

    #[test]
    fn streams_without_usage_pass_unchanged() {
        let (out, removed) = run(&[TOK, "data: {\"choices\":[{\"de", "lta\":{}}]}\n\n", DONE]);
        assert_eq!(out, format!("{TOK}data: {{\"choices\":[{{\"delta\":{{}}}}]}}\n\n{DONE}"));
        assert!(!removed);
        let (out, _) = run(&["data: unterminated"]);
        assert_eq!(out, "data: unterminated");
    }

    /// The body as the upstream gets it, after the gateway's scan and splice.
    fn splice(body: &str, set_model: Option<&str>, usage: bool) -> Option<String> {
        let scan = crate::request_body::scan(body.as_bytes()).unwrap();
        json_body(body.as_bytes(), &scan.spans, set_model, usage).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn include_usage_and_default_model_are_spliced_in() {
        let usage = |b: &str| splice(b, None, true).unwrap();
        // Every byte of the client's body stays; only the member or value is added.
        assert_eq!(
            usage(r#"{"model":"m","stream":true,"stream_options":{}}"#),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(usage(r#"{ "stream" : true }"#), r#"{"stream_options":{"include_usage":true}, "stream" : true }"#);
        assert_eq!(
            usage(r#"{"stream":true,"stream_options":{ "x":1 }}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true, "x":1 }}"#
        );
        assert_eq!(
            usage("{\"stream\":true,\"stream_options\": { \n }}"),
            r#"{"stream":true,"stream_options": {"include_usage":true}}"#
        );
        assert_eq!(
            usage(r#"{"stream":true,"stream_options":{"include_usage":false,"y":2}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true,"y":2}}"#
        );
        assert_eq!(
            usage(r#"{"stream":true,"stream_options":{"y":2,"include_usage":null}}"#),
            r#"{"stream":true,"stream_options":{"y":2,"include_usage":true}}"#
        );
        assert_eq!(
            usage(r#"{"stream":true,"stream_options":null}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        // Keys spelt with escapes are found by their meaning; the spliced body keeps them.
        assert_eq!(
            usage(r#"{"stream":true,"stream\u005foptions":{"include\u005fusage":false},"t":"\u00e9"}"#),
            r#"{"stream":true,"stream\u005foptions":{"include\u005fusage":true},"t":"\u00e9"}"#
        );
        assert_eq!(
            usage(r#"{"é":"ü","stream":true}"#),
            r#"{"stream_options":{"include_usage":true},"é":"ü","stream":true}"#
        );
        assert!(splice(r#"{"model":"m"}"#, None, false).is_none());
        // A default model fills an absent, null or empty model.
        assert_eq!(splice(r#"{"model":null,"x":1}"#, Some("d"), false).unwrap(), r#"{"model":"d","x":1}"#);
        assert_eq!(splice(r#"{"model" : "" }"#, Some("d"), false).unwrap(), r#"{"model" : "d" }"#);
        assert_eq!(
            splice("{}", Some("d\"q"), true).unwrap(),
            r#"{"model":"d\"q","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(splice(r#" {"x":[1]} "#, Some("d"), false).unwrap(), r#" {"model":"d","x":[1]} "#);
        // Every result is JSON, with what was asked for.
        for body in [
            "{}",
            "{ }",
            " {\"a\":{\"stream_options\":1}}\n",
            r#"{"stream_options":[false]}"#,
            r#"{"stream_options":{"a":{"include_usage":false}}}"#,
            r#"{"model":null,"stream_options":{"include_usage":null}}"#,
        ] {
            let out = splice(body, Some("d"), true).unwrap_or_else(|| panic!("{body}"));
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{body} -> {out}: {e}"));
            assert_eq!(v["model"], "d", "{out}");
            assert_eq!(v["stream_options"]["include_usage"], true, "{out}");
        }
    }
    #[test]
    fn ambiguous_bodies_are_refused_before_any_splice() {
        use crate::request_body::{scan, ScanError};
        // A key twice, at the top or inside stream_options: upstreams differ in which wins.
        assert!(matches!(
            scan(br#"{"stream":true,"stream_options":{},"stream_options":{}}"#),
            Err(ScanError::DuplicateKey(_))
        ));
        assert!(matches!(
            scan(br#"{"stream":true,"stream_options":{},"stream_options":{}}"#),
            Err(ScanError::DuplicateKey(_))
        ));
        assert!(matches!(
            scan(br#"{"stream_options":{"include_usage":false,"include_usage":true}}"#),
            Err(ScanError::Invalid(_))
        ));
        assert!(matches!(scan(br#"{"stream_options":{"include_usage":"yes"}}"#), Err(ScanError::Invalid(_))));
        assert!(matches!(scan(br#"{"stream_options":5}"#), Err(ScanError::Invalid(_))));
    }

    #[test]
    fn a_default_model_joins_a_form() {
        let form = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxx\r\n--B--\r\n";
        let out = multipart_with_model(&[Bytes::from(form)], "B", "d").unwrap();
        let ct = "multipart/form-data; boundary=B";
        assert_eq!(crate::request_body::multipart_model(&out, ct).unwrap().as_deref(), Some("d"));
        let out = multipart_with_model(&[Bytes::from_static(b"--B--")], "B", "d").unwrap();
        assert_eq!(crate::request_body::multipart_model(&out, ct).unwrap().as_deref(), Some("d"));
    }

    #[test]
    fn models_are_filtered_or_refused() {
        let globs = ModelGlobs(vec!["a*".into()]);
        let out = filter_models(br#"{"object":"list","data":[{"id":"ab"},{"id":"b"},{"x":1}]}"#, &globs).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        assert_eq!(v["data"][0]["id"], "ab");
        for bad in [&b"not json"[..], b"[]", br#"{"data":{}}"#, br#"{"object":"list"}"#, b""] {
            assert!(filter_models(bad, &globs).is_none());
        }
    }
}
