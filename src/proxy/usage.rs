//! Observes response bodies without changing a byte: SSE bodies go through the one SSE
//! tokenizer ([`crate::sse`]: events span chunks, chunks hold several events, lines end with
//! LF, CRLF or a bare CR) to find the `usage` object of the final chunk; plain JSON bodies are
//! kept (bounded) and parsed at the end for `usage`.

mod json;

use crate::sse::{self, Token, Tokenizer};
use bytes::Bytes;

/// Longest JSON body kept for usage parsing; longer ones are not parsed (SSE lines are
/// bounded by the tokenizer's `sse::MAX_LINE`).
const MAX_KEEP: usize = 4 << 20;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    #[default]
    Other,
    Sse,
    Json,
}

/// What the observer learnt of one SSE chunk, handed to the usage strip that reads the same
/// bytes after it, so that the strip neither searches nor walks them again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHint {
    /// Where the chunk's first `"usage"` key is ([`sse::find_usage_key`]).
    pub key: Option<usize>,
    /// The first `data` line of the chunk (within it) that the observer read for its usage:
    /// its payload's start and length in the chunk, and [`is_usage_chunk`]'s answer on it.
    pub walked: Option<(usize, usize, Option<bool>)>,
}

impl ChunkHint {
    /// A hint that only gives the key.
    pub fn key(key: Option<usize>) -> Self {
        ChunkHint { key, walked: None }
    }
}

#[derive(Debug, Default)]
pub struct UsageObserver {
    kind: BodyKind,
    sse: Tokenizer,
    buf: Vec<u8>,
    overflow: bool,
    pub usage: Option<Usage>,
    /// When the first SSE data event arrived (time to first token of a streamed answer).
    pub first_event_at: Option<std::time::Instant>,
}

impl UsageObserver {
    pub fn start(&mut self, content_type: Option<&str>) {
        // Compared in place, ignoring case: no lower-case copy of the value per answer.
        let ct = content_type.unwrap_or("").as_bytes();
        let starts = |prefix: &str| ct.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()));
        self.kind = if starts("text/event-stream") {
            BodyKind::Sse
        } else if starts("application/json") {
            BodyKind::Json
        } else {
            BodyKind::Other
        };
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Observes one chunk of the backend's body. For an SSE chunk, returns where its first
    /// `"usage"` key (one whose value may not be null: [`sse::find_usage_key`]) is and what the
    /// observer read of its usage line, so that the usage strip reading the same bytes after
    /// this does not search or walk them again; an empty hint for other bodies.
    pub fn observe(&mut self, chunk: Option<&Bytes>, end: bool) -> ChunkHint {
        match self.kind {
            BodyKind::Other => ChunkHint::default(),
            BodyKind::Sse => chunk.map(|c| self.feed_sse(c)).unwrap_or_default(),
            BodyKind::Json => {
                // The whole answer in its last chunk (the common case) is read in place, not copied.
                let in_place = end && self.buf.is_empty();
                if let (false, Some(c)) = (in_place, chunk) {
                    self.keep(c);
                }
                if end && !self.overflow {
                    let body: &[u8] = if in_place { chunk.map_or(&[], |c| &c[..]) } else { &self.buf };
                    if !body.is_empty() && body.len() <= MAX_KEEP {
                        self.usage = parse_usage(body).or(self.usage);
                    }
                    self.buf = Vec::new();
                }
                ChunkHint::default()
            }
        }
    }

    fn keep(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + data.len() > MAX_KEEP {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The chunk's first usage key and usage line (see [`Self::observe`]).
    fn feed_sse(&mut self, data: &[u8]) -> ChunkHint {
        // One search for `"usage"` per chunk, not one per line.
        let first = sse::find_usage_key(data, 0);
        let mut hint = ChunkHint::key(first);
        let mut key = first;
        // Once the first event is timed only `usage` is read: whole events without it are not
        // split into lines.
        if let Some(events) = self.sse.whole_events(data).filter(|_| key.is_none()) {
            if self.first_event_at.is_some() {
                return hint;
            }
            // The first event (the usual first chunk): timed from its first line, not split.
            if events.first_line().is_some_and(is_an_event) {
                self.first_event_at = Some(std::time::Instant::now());
                return hint;
            }
        }
        let mut tok = std::mem::take(&mut self.sse);
        tok.feed(data, |t, at| {
            if let Token::Line { text, eol } = t {
                // A line within the chunk ends where its line ending starts; a line joined
                // across chunks is longer than that and is searched on its own.
                let end = at.saturating_sub(eol.len());
                let (has_key, start) = match end.checked_sub(text.len()) {
                    Some(start) => {
                        if key.is_some_and(|k| k < start) {
                            key = sse::find_usage_key(data, start);
                        }
                        (key.is_some_and(|k| k + sse::USAGE_KEY_LEN <= end), Some(start))
                    }
                    None => (sse::contains_usage_key(text), None),
                };
                if let Some(verdict) = self.line(text, has_key) {
                    if let (Some(start), None) = (start, hint.walked) {
                        hint.walked = Some((start + text.len() - verdict.1, verdict.1, verdict.0));
                    }
                }
            }
        });
        self.sse = tok;
        hint
    }

    /// One complete SSE line; `has_key`: it holds `"usage"`. When its data was read for usage:
    /// whether it is the usage chunk ([`is_usage_chunk`]) and the data's length.
    fn line(&mut self, line: &[u8], has_key: bool) -> Option<(Option<bool>, usize)> {
        let payload = sse::field(line, b"data")?;
        if payload == b"[DONE]" {
            return None;
        }
        if self.first_event_at.is_none() {
            self.first_event_at = Some(std::time::Instant::now());
        }
        // Only the chunk(s) carrying usage are parsed: the hot path is a substring check.
        if !has_key {
            return None;
        }
        let (usage, chunk) = read(payload);
        if let Some(u) = usage {
            self.usage = Some(u);
        }
        Some((chunk, payload.len()))
    }
}

/// Whether a line is one that [`UsageObserver::line`] times as the first event: a `data` field
/// other than `[DONE]`.
fn is_an_event(line: &[u8]) -> bool {
    sse::field(line, b"data").is_some_and(|p| p != b"[DONE]")
}

/// Whether one event's `data` is the usage chunk (see [`json::is_usage_chunk`]); `None` when
/// the walk is unsure and serde_json must decide.
pub fn is_usage_chunk(data: &[u8]) -> Option<bool> {
    json::is_usage_chunk(data)
}

/// `usage` of a completion, embedding, score or rerank answer, or of a Responses API answer
/// (`input_tokens`/`output_tokens`, nested in `response` in the streamed `response.completed`
/// event). Embeddings and scores carry prompt tokens only, rerank only `total_tokens` (counted
/// as prompt tokens); an audio duration (`{"type":"duration","seconds":…}`) counts no tokens.
fn parse_usage(json: &[u8]) -> Option<Usage> {
    // [`read`] without the usage chunk's question, which a whole answer does not ask.
    match json::top(json) {
        Some(top) => usage_of(json, top.usage()),
        None => parse_full(json).and_then(UsageFields::usage),
    }
}

/// [`parse_usage`], and from the same walk whether `json` is the usage chunk
/// ([`is_usage_chunk`]): the usage strip asks that of the chunk the observer reads.
fn read(json: &[u8]) -> (Option<Usage>, Option<bool>) {
    match json::top(json) {
        Some(top) => (usage_of(json, top.usage()), top.is_usage_chunk(json)),
        None => (parse_full(json).and_then(UsageFields::usage), None),
    }
}

fn usage_of(json: &[u8], walk: json::Walk) -> Option<Usage> {
    let u = match walk {
        // Only the `usage` value is parsed: on these answers that is what the full parse gives.
        json::Walk::Found(found) => {
            let (span, counts) = found?;
            match counts {
                Some(counts) => UsageFields::from(counts?),
                None => serde_json::from_slice::<Option<UsageFields>>(json.get(span)?).ok()??,
            }
        }
        json::Walk::Unsure => parse_full(json)?,
    };
    u.usage()
}

/// The whole answer through serde_json: the Responses API shape, escapes, duplicates.
fn parse_full(json: &[u8]) -> Option<UsageFields> {
    #[derive(serde::Deserialize)]
    struct Doc {
        usage: Option<UsageFields>,
        response: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        usage: Option<UsageFields>,
    }
    let doc: Doc = serde_json::from_slice(json).ok()?;
    doc.usage.or(doc.response.and_then(|r| r.usage))
}

#[derive(serde::Deserialize)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl From<json::Counts> for UsageFields {
    fn from([prompt_tokens, completion_tokens, input_tokens, output_tokens, total_tokens]: json::Counts) -> Self {
        UsageFields { prompt_tokens, completion_tokens, input_tokens, output_tokens, total_tokens }
    }
}

impl UsageFields {
    fn usage(self) -> Option<Usage> {
        let prompt = self.prompt_tokens.or(self.input_tokens);
        let completion = self.completion_tokens.or(self.output_tokens);
        let prompt = match (prompt, completion) {
            (None, None) => Some(self.total_tokens?),
            (p, _) => p,
        };
        Some(Usage { prompt_tokens: prompt.unwrap_or(0), completion_tokens: completion.unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_walk_reads_usage_as_the_full_parse_does() {
        let docs = [
            r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {} ]}"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}},"choices":[]}"#,
            r#"{"choices":[{"usage":{"prompt_tokens":9}}]}"#,
            r#"{"usage":null}"#,
            r#"{"usage":null,"response":{"usage":{"input_tokens":5,"output_tokens":6}}}"#,
            r#"{"response":{"usage":{"input_tokens":5,"output_tokens":6}}}"#,
            r#"{"\u0075sage":{"prompt_tokens":7,"completion_tokens":8}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"usage":{"total_tokens":12}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":1.5}}"#,
            r#"{"usage":{"prompt_tokens":"1"}}"#,
            r#"{"usage":[1,2]}"#,
            r#"{"usage":{"prompt_tokens":01}}"#,
            r#"{"usage":{"prompt_tokens":1e2,"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551615,"x":[{"y":"}"}]}}"#,
            r#"{"usage":{"prompt_tokens":null,"completion_tokens":0,"input_tokens":3}}"#,
            r#"{"usage":{"prompt\u005ftokens":4}}"#,
            r#"{"usage":{ }}"#,
            r#"{"usage":{"prompt_tokens":1 ,"completion_tokens" : 2 }}"#,
            r#"{}"#,
            r#"  { "a" : [ {"b": [[]]}, "x" ] , "usage" : { "prompt_tokens" : 10 , "completion_tokens" : 0 } }  "#,
            r#"{"a":true,"b":false,"c":null,"d":1e5,"usage":{"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1}} x"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"a":[}],"usage":{"prompt_tokens":1}}"#,
            r#"{"a":"\\","usage":{"prompt_tokens":1}}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#"{"usage":{"prompt_tokens":1},}"#,
            r#"{"usage" {"prompt_tokens":1}}"#,
            // Where the in-place read of `usage` and the lenient skip could part: numbers and
            // literals holding quotes or brackets, a count given twice, escapes, odd values.
            r#"{"usage":{"prompt_tokens":1,"x":1"}"},"y":2}"#,
            r#"{"usage":{"prompt_tokens":1,"x":tru"e}"}}"#,
            r#"{"usage":{"prompt_tokens":1,"x":1[},"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1,"x":1{}},"completion_tokens":2}"#,
            r#"{"usage":{"prompt_tokens":1,"x":-1.5e+3,"y":true,"z":null},"choices":[]}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"x":""}"},"z":1}"#,
            r#"{"usage":{"prompt_tokens":1 "completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1,}}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1]}"#,
            r#"{"usage":{"prompt_tokens":12345678901234567890123}}"#,
            r#"{"usage":{"prompt_tokens":1,"d":{"a":[1,{"b":"]"}]}},"response":1}"#,
            r#"{"usage":{"prompt_tokens":1,"d":{"a":[1,{"b":"]"}]}},"usage":null}"#,
            r#"{"usage":null,"usage":{"prompt_tokens":1}}"#,
            "{\"usage\":{\"prompt_tokens\":1,\"x\":\"\u{e9}\\n\"},\"t\":\"\u{fc}\"}",
            "{\"usage\"\t:\r\n{ \"prompt_tokens\"\n:\t3 }\n}",
            "",
        ];
        for d in docs {
            let full = parse_full(d.as_bytes()).and_then(UsageFields::usage);
            assert_eq!(parse_usage(d.as_bytes()), full, "{d}");
        }
        let deep = format!(r#"{{"a":{}{},"usage":{{"prompt_tokens":1}}}}"#, "[".repeat(200), "]".repeat(200));
        assert_eq!(parse_usage(deep.as_bytes()), parse_full(deep.as_bytes()).and_then(UsageFields::usage));
        // Nesting inside `usage` at and around the skip's depth limit.
        for n in [126, 127, 128, 129] {
            let deep = format!(r#"{{"usage":{{"prompt_tokens":1,"d":{}{}}}}}"#, "[".repeat(n), "]".repeat(n));
            let want = parse_full(deep.as_bytes()).and_then(UsageFields::usage);
            assert_eq!(parse_usage(deep.as_bytes()), want, "{n}");
            assert_eq!(reference(deep.as_bytes()), want, "{n}");
        }
        for d in docs {
            assert_eq!(parse_usage(d.as_bytes()), reference(d.as_bytes()), "{d}");
        }
    }

    /// Generated answers (nested `usage` keys, strings holding quotes, braces, escapes and
    /// `"usage"`, counts of every form): wherever serde_json reads the whole document, the walk
    /// reads the same usage; cut short at any offset, none.
    #[test]
    fn generated_answers_and_every_cut_read_as_the_full_parse() {
        let mut seed = 0x853C_49E6_748F_EA9Bu64;
        let mut pick = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let strings = [r#""a""#, r#""{\"usage\":{}}""#, r#""\"usage\": [""#, r#""}]\\""#, r#""\u0075""#, r#""""#];
        let counts = ["4", "16", "0", "7", "12", "null", "01", "-1", "1.5", "1e2", "18446744073709551616", r#""3""#];
        let names = ["prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "x", "usage"];
        let mut checked = 0;
        for _ in 0..2000 {
            let mut doc = String::from("{");
            let members = pick(5) + 1;
            for m in 0..members {
                if m > 0 {
                    doc.push(',');
                }
                match pick(6) {
                    0 | 1 => {
                        doc.push_str("\"usage\":{");
                        for c in 0..pick(4) {
                            if c > 0 {
                                doc.push(',');
                            }
                            let count = counts[if pick(4) == 0 { pick(counts.len()) } else { pick(6) }];
                            doc.push_str(&format!("\"{}\":{count}", names[pick(names.len())]));
                        }
                        if pick(3) == 0 {
                            doc.push_str(&format!(",\"d\":{{\"usage\":{}}}", strings[pick(strings.len())]));
                        }
                        doc.push('}');
                    }
                    2 => doc.push_str(&format!(
                        "\"choices\":[{{\"usage\":{{\"prompt_tokens\":9}},\"t\":{}}}]",
                        strings[pick(strings.len())]
                    )),
                    3 => doc.push_str(&format!("\"id\":{}", strings[pick(strings.len())])),
                    4 => doc.push_str("\"usage\":null"),
                    _ => doc.push_str(&format!("\"n\":{}", counts[pick(counts.len())])),
                }
            }
            doc.push('}');
            if let Some(want) = parse_full(doc.as_bytes()) {
                assert_eq!(parse_usage(doc.as_bytes()), want.usage(), "{doc}");
                checked += 1;
            }
            // Cut short, the answer is not one object: no usage (fail closed).
            for cut in 0..doc.len() {
                assert_eq!(parse_usage(&doc.as_bytes()[..cut]), None, "{cut} {doc}");
            }
        }
        assert!(checked > 200, "{checked}");
    }

    /// The walk as it was before `usage` was read in place: every value skipped leniently, then
    /// the `usage` span read for its counts ([`json::usage_counts`]).
    fn reference(json: &[u8]) -> Option<Usage> {
        let top = json::top(json);
        let found = match top.as_ref().map(json::Top::usage) {
            Some(json::Walk::Found(found)) => found,
            _ => return parse_full(json)?.usage(),
        };
        let (span, counts) = found?;
        let raw = json.get(span)?;
        let lenient = json::usage_counts(raw);
        if let Some(counts) = counts {
            // Where the in-place read gave counts, the span's read gives the same.
            assert_eq!(lenient, Some(counts), "{:?}", String::from_utf8_lossy(json));
        }
        match lenient {
            Some(c) => UsageFields::from(c?),
            None => serde_json::from_slice::<Option<UsageFields>>(raw).ok()??,
        }
        .usage()
    }

    fn feed(chunks: &[&str]) -> UsageObserver {
        let mut o = UsageObserver::default();
        o.start(Some("text/event-stream; charset=utf-8"));
        for c in chunks {
            // The usage strip relies on the key the observer hands it.
            let hint = o.observe(Some(&Bytes::copy_from_slice(c.as_bytes())), false);
            assert_eq!(hint.key, sse::find_usage_key(c.as_bytes(), 0), "{c:?}");
            if let Some((start, len, verdict)) = hint.walked {
                assert_eq!(verdict, is_usage_chunk(&c.as_bytes()[start..start + len]), "{c:?}");
            }
        }
        assert_eq!(o.observe(None, true), ChunkHint::default());
        o
    }

    #[test]
    fn usage_split_across_chunks_with_crlf() {
        let o = feed(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\r\n\r\nda",
            "ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"comp",
            "letion_tokens\":3}}\r\n\r\ndata: [DONE]\r\n\r\n",
        ]);
        assert_eq!(o.usage, Some(Usage { prompt_tokens: 7, completion_tokens: 3 }));
        assert!(o.first_event_at.is_some());
    }

    #[test]
    fn usage_with_bare_cr_line_endings() {
        let o = feed(&[
            "data: {\"choices\":[]}\r\rdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"comp",
            "letion_tokens\":5}}\r",
            "\rdata: [DONE]\r\r",
        ]);
        assert_eq!(o.usage, Some(Usage { prompt_tokens: 2, completion_tokens: 5 }));
        assert!(o.first_event_at.is_some());
    }

    /// Usage is found wherever the chunks are cut, also when `"usage"` itself is cut, when a
    /// chunk holds `"usage"` in an earlier event too, and for every line ending.
    #[test]
    fn usage_found_at_every_split() {
        for eol in ["\n", "\r\n", "\r"] {
            let stream = "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n: c\n\n\
                          data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\
                          \"usage\":{\"prompt_tokens\":4,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n"
                .replace('\n', eol);
            for i in 0..=stream.len() {
                for j in i..=stream.len() {
                    let o = feed(&[&stream[..i], &stream[i..j], &stream[j..]]);
                    assert_eq!(o.usage, Some(Usage { prompt_tokens: 4, completion_tokens: 9 }), "{eol:?} {i} {j}");
                    assert!(o.first_event_at.is_some(), "{eol:?} {i} {j}");
                }
            }
        }
    }

    /// A first chunk of whole events is timed as the tokenizer would time it: at its first
    /// `data` line that is not `[DONE]` (here checked on the first line alone, else split).
    #[test]
    fn first_events_are_timed_as_when_split_into_lines() {
        let chunks = [
            "data: {\"choices\":[]}\n\n",
            "data:{}\n\n",
            "data:\n\n",
            "data\n\n",
            "data: [DONE]\n\n",
            "data: [DONE]\n\ndata: {}\n\n",
            "data:  [DONE]\n\n",
            "data: [DONE] \n\n",
            ": ping\n\ndata: {}\n\n",
            ": ping\n\n",
            "event: x\ndata: {}\n\n",
            "event: x\n\n",
            "data: {}\r\n\r\n",
            "data: {}\r\rdata: [DONE]\n\n",
            "\n\n",
            "Data: {}\n\n",
            "id: 1\r\n\n",
        ];
        for c in chunks {
            let mut timed = false;
            let mut tok = Tokenizer::default();
            tok.feed(c.as_bytes(), |t, _| {
                if let Token::Line { text, .. } = t {
                    timed |= sse::field(text, b"data").is_some_and(|p| p != b"[DONE]");
                }
            });
            let mut o = UsageObserver::default();
            o.start(Some("text/event-stream"));
            o.observe(Some(&Bytes::copy_from_slice(c.as_bytes())), false);
            assert_eq!(o.first_event_at.is_some(), timed, "{c:?}");
            // The observer's tokenizer is where it was: the next chunk is read the same.
            let next = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
            o.observe(Some(&Bytes::from_static(next.as_bytes())), true);
            assert_eq!(o.usage, Some(Usage { prompt_tokens: 1, completion_tokens: 2 }), "{c:?}");
            assert!(o.first_event_at.is_some(), "{c:?}");
        }
    }

    #[test]
    fn null_usage_is_ignored() {
        let o = feed(&["data: {\"usage\":null}\n\n", "data: [DONE]\n\n"]);
        assert_eq!(o.usage, None);
    }

    #[test]
    fn every_usage_shape() {
        let u = |s: &str| parse_usage(s.as_bytes());
        let pc = |p, c| Some(Usage { prompt_tokens: p, completion_tokens: c });
        assert_eq!(u(r#"{"usage":{"prompt_tokens":4,"total_tokens":4,"completion_tokens":0}}"#), pc(4, 0));
        assert_eq!(u(r#"{"usage":{"input_tokens":5,"output_tokens":6,"total_tokens":11}}"#), pc(5, 6));
        assert_eq!(
            u(r#"{"type":"response.completed","response":{"usage":{"input_tokens":2,"output_tokens":3}}}"#),
            pc(2, 3)
        );
        assert_eq!(u(r#"{"type":"response.created","response":{"usage":null}}"#), None);
        assert_eq!(u(r#"{"usage":{"total_tokens":9}}"#), pc(9, 0));
        assert_eq!(u(r#"{"text":"x","usage":{"type":"duration","seconds":3}}"#), None);
    }

    /// The kind read in place is the kind read from a lower-case copy of the value.
    #[test]
    fn body_kind_ignores_case_as_the_lower_case_copy_did() {
        let old = |ct: Option<&str>| {
            let ct = ct.unwrap_or("").to_ascii_lowercase();
            if ct.starts_with("text/event-stream") {
                BodyKind::Sse
            } else if ct.starts_with("application/json") {
                BodyKind::Json
            } else {
                BodyKind::Other
            }
        };
        let values = [
            None,
            Some(""),
            Some("text/event-stream"),
            Some("Text/Event-Stream; charset=utf-8"),
            Some("text/event-strea"),
            Some("application/JSON"),
            Some("application/json; charset=utf-8"),
            Some("application/jsonx"),
            Some("application/jso"),
            Some(" application/json"),
            Some("text/plain"),
            Some("applicatio\u{e9}/json"),
            Some("\u{212a}ext/event-stream"),
        ];
        for ct in values {
            let mut o = UsageObserver::default();
            o.start(ct);
            assert_eq!(o.kind(), old(ct), "{ct:?}");
        }
    }

    #[test]
    fn json_body() {
        let mut o = UsageObserver::default();
        o.start(Some("application/json"));
        o.observe(Some(&Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":1,")), false);
        o.observe(Some(&Bytes::from_static(b"\"completion_tokens\":2}}")), true);
        assert_eq!(o.usage, Some(Usage { prompt_tokens: 1, completion_tokens: 2 }));
    }
}
