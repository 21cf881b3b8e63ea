//! Server-sent events as bytes: the one tokenizer every SSE consumer uses — the usage
//! observer and the usage-event removal on the request path, the keepalive boundary of the
//! heartbeat relay, MCP's endpoint rewrite, and the Telegram runner's answer reader.
//!
//! Lines end with LF, CRLF or a bare CR (all three are SSE); a blank line ends an event.
//! Bytes arrive in chunks split anywhere, also between the CR and the LF of one line ending:
//! the tokenizer keeps the unfinished line (bounded) and remembers a trailing CR, so a line
//! is reported as soon as its ending arrives and never twice.

use std::mem;

/// Default bound of one line (4 MiB): longer lines are reported as [`Token::LongLine`].
pub const MAX_LINE: usize = 4 << 20;

/// What the tokenizer found; each comes with the offset in the fed chunk just past it.
#[derive(Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// A complete non-empty line, without its ending; `eol` is `\n`, `\r\n` or `\r`.
    Line { text: &'a [u8], eol: &'a [u8] },
    /// A line longer than the bound: its text was not kept.
    LongLine,
    /// A blank line: the event ends here.
    Blank { eol: &'a [u8] },
    /// The LF of a CR LF whose CR ended the previous chunk (it belongs to that line ending).
    CrLfTail,
}

/// Incremental SSE line splitter.
#[derive(Debug)]
pub struct Tokenizer {
    /// The start of a line that continues in the next chunk.
    line: Vec<u8>,
    /// The unfinished line passed `max_line`: its text is dropped.
    overlong: bool,
    /// The last byte was a CR ending a line: an LF next completes that line ending.
    after_cr: bool,
    /// A line of the current event was seen (no blank line since).
    in_event: bool,
    max_line: usize,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(MAX_LINE)
    }
}

impl Tokenizer {
    /// Lines longer than `max_line` bytes are reported as [`Token::LongLine`] (0: never keep
    /// text, for consumers that only need event boundaries).
    pub fn new(max_line: usize) -> Self {
        Tokenizer { line: Vec::new(), overlong: false, after_cr: false, in_event: false, max_line }
    }

    /// Splits `data`, calling `on` with each token and the offset in `data` just past it.
    /// Bytes after the last line ending are kept for the next call.
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(Token<'_>, usize)) {
        if data.is_empty() {
            return;
        }
        let mut pos = 0;
        if mem::take(&mut self.after_cr) && data[0] == b'\n' {
            pos = 1;
            on(Token::CrLfTail, 1);
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', &data[pos..]) {
            let at = pos + i;
            let mut end = at + 1;
            if data[at] == b'\r' {
                match data.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let (head, eol) = (&data[pos..at], &data[at..end]);
            pos = end;
            if mem::take(&mut self.overlong) {
                self.line.clear();
                on(Token::LongLine, end);
            } else if self.line.is_empty() && head.is_empty() {
                self.in_event = false;
                on(Token::Blank { eol }, end);
                continue;
            } else if self.line.len() + head.len() > self.max_line {
                self.line.clear();
                on(Token::LongLine, end);
            } else if self.line.is_empty() {
                on(Token::Line { text: head, eol }, end);
            } else {
                self.line.extend_from_slice(head);
                let line = mem::take(&mut self.line);
                on(Token::Line { text: &line, eol }, end);
                self.line = line;
                self.line.clear();
            }
            self.in_event = true;
        }
        let tail = &data[pos..];
        if tail.is_empty() || self.overlong {
            return;
        }
        if self.line.len() + tail.len() > self.max_line {
            self.overlong = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(tail);
        }
        self.in_event = true;
    }

    /// True when the bytes fed so far end at an event boundary (or nothing was fed): a
    /// comment or a new event may be inserted here without joining another event.
    pub fn at_boundary(&self) -> bool {
        !self.in_event && self.line.is_empty() && !self.overlong
    }

    /// [`Self::at_boundary`], and no CR waits for its LF: a chunk may be passed on without
    /// feeding it when it ends in a blank line too.
    pub fn at_clean_boundary(&self) -> bool {
        self.at_boundary() && !self.after_cr
    }

    /// `chunk` as whole events, when feeding it would end where the bytes so far end: at a
    /// clean boundary, the chunk ending in LF LF (its last LF is then a blank line, whatever
    /// ends the line before it). A consumer that looks for one thing in a chunk may then read
    /// it without splitting it into lines and without feeding it: the tokenizer's state after
    /// the chunk is the state before it. `None` otherwise.
    pub fn whole_events<'a>(&self, chunk: &'a [u8]) -> Option<WholeEvents<'a>> {
        (self.at_clean_boundary() && chunk.ends_with(b"\n\n")).then_some(WholeEvents { chunk, max_line: self.max_line })
    }
}

/// A chunk of whole events ([`Tokenizer::whole_events`]), read without splitting it.
#[derive(Debug, Clone, Copy)]
pub struct WholeEvents<'a> {
    chunk: &'a [u8],
    max_line: usize,
}

impl<'a> WholeEvents<'a> {
    /// The first line, as the first token of the chunk would carry it: `None` when that token
    /// is a blank line or a line longer than the tokenizer keeps.
    pub fn first_line(&self) -> Option<&'a [u8]> {
        let end = memchr::memchr2(b'\n', b'\r', self.chunk)?;
        (end > 0 && end <= self.max_line).then(|| &self.chunk[..end])
    }

    /// The chunk's one line, when it is one line (within the bound) and the blank line that
    /// ends its event: the tokens would be that line and one blank line.
    pub fn only_line(&self) -> Option<&'a [u8]> {
        let line = &self.chunk[..self.chunk.len() - 2];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (!line.is_empty() && line.len() <= self.max_line && memchr::memchr2(b'\n', b'\r', line).is_none())
            .then_some(line)
    }
}

/// Whether the bytes written so far end at an event boundary (a blank line), however the
/// events were split into chunks: where the heartbeat relay may insert a keepalive comment.
#[derive(Debug)]
pub struct Boundary(Tokenizer);

impl Default for Boundary {
    fn default() -> Self {
        Boundary(Tokenizer::new(0))
    }
}

impl Boundary {
    pub fn feed(&mut self, data: &[u8]) {
        self.0.feed(data, |_, _| {});
    }

    /// True before any byte, and after a blank line.
    pub fn at_boundary(&self) -> bool {
        self.0.at_boundary()
    }
}

/// The value of the field `name` if `line` is that field (`name:` then an optional space).
pub fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// The `data` of one whole event (its data lines joined by LF, as a client sees it);
/// `None` when a line of it is longer than [`MAX_LINE`].
pub fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    let mut long = false;
    let mut tok = Tokenizer::default();
    let mut take = |t: Token<'_>, _| match t {
        Token::Line { text, .. } => {
            if let Some(v) = field(text, b"data") {
                match data.as_mut() {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(v);
                    }
                    None => data = Some(v.to_vec()),
                }
            }
        }
        Token::LongLine => long = true,
        Token::Blank { .. } | Token::CrLfTail => {}
    };
    tok.feed(event, &mut take);
    tok.feed(b"\n", &mut take); // an event given without its blank line ends here
    if long {
        return None;
    }
    Some(data.unwrap_or_default())
}

/// Byte substring search (SIMD via memchr): the hot-path check before any JSON parsing.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// The searcher for `"usage"`, built once: `memmem::find` builds one per call, which cost
/// more than the search itself on every event of a stream (docs/benchmarks.md).
static USAGE_KEY: once_cell::sync::Lazy<memchr::memmem::Finder<'static>> =
    once_cell::sync::Lazy::new(|| memchr::memmem::Finder::new(KEY));

/// The key searched for, quotes included.
const KEY: &[u8] = b"\"usage\"";

/// [`contains`] for `"usage"` with a value that may not be `null` ([`find_usage_key`]): the
/// check of the usage observer and the usage strip before any JSON is read.
pub fn contains_usage_key(hay: &[u8]) -> bool {
    find_usage_key(hay, 0).is_some()
}

/// Length of the `"usage"` key searched for.
pub const USAGE_KEY_LEN: usize = 7;

/// Where `"usage"` first appears in `hay` at or after `from` with a value that may not be
/// `null` (one search per chunk serves all its events: callers search again past an event only
/// once it held an occurrence).
///
/// Streams that asked for usage carry `"usage":null` in every chunk; an occurrence followed on
/// the same line by `:` and `null` (spaces or tabs between) is passed over, so those chunks take
/// the fast paths. Only spaces and tabs: an SSE line ending between the key and its value could
/// join it to another value in the event's data, so such an occurrence is still reported.
pub fn find_usage_key(hay: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = find_key(hay, from)?;
        from = at + USAGE_KEY_LEN;
        if !null_follows(&hay[from..]) {
            return Some(at);
        }
    }
}

/// The key's searcher on x86_64 with AVX2: the substring searcher's own vector loop, keyed on
/// the key's `u` and `g` (bytes 1 and 4), a pair that completion chunks hardly ever hold three
/// bytes apart (the general searcher picks its pair by byte frequencies in text and meets false
/// candidates in every chunk), and called without the general searcher's dispatch.
#[cfg(target_arch = "x86_64")]
static USAGE_PAIR: once_cell::sync::Lazy<Option<memchr::arch::x86_64::avx2::packedpair::Finder>> =
    once_cell::sync::Lazy::new(|| {
        let pair = memchr::arch::all::packedpair::Pair::with_indices(KEY, 1, 4)?;
        memchr::arch::x86_64::avx2::packedpair::Finder::with_pair(KEY, pair)
    });

/// Where `"usage"` first appears in `hay` at or after `from`.
fn find_key(hay: &[u8], from: usize) -> Option<usize> {
    let rest = hay.get(from..)?;
    #[cfg(target_arch = "x86_64")]
    if let Some(finder) = USAGE_PAIR.as_ref() {
        if rest.len() >= finder.min_haystack_len() {
            return finder.find(rest, KEY).map(|i| from + i);
        }
    }
    USAGE_KEY.find(rest).map(|i| from + i)
}

/// `rest` starts with `:` and `null` (spaces or tabs around the colon).
fn null_follows(rest: &[u8]) -> bool {
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let skip = |b: &[u8]| -> usize { b.iter().take_while(|c| blank(c)).count() };
    let rest = &rest[skip(rest)..];
    let Some(rest) = rest.strip_prefix(b":") else { return false };
    rest[skip(rest)..].starts_with(b"null")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What [`Tokenizer::whole_events`] says of a chunk is what feeding it finds: the state is
    /// unchanged, the first line is the first token's, the only line is the only line token.
    #[test]
    fn whole_events_read_a_chunk_as_feeding_it_would() {
        let before: [&[u8]; 4] = [b"", b"data: x\n\n", b"data: x\r", b"data: x\n"];
        let chunks: [&[u8]; 16] = [
            b"data: {}\n\n",
            b"data: {}\r\n\n",
            b"data: {}\r\r\n\n",
            b"data: a\ndata: b\n\n",
            b"data: a\n\ndata: b\n\n",
            b": c\n\n",
            b"\n\n",
            b"\r\n\n",
            b"\n\ndata: x\n\n",
            b"data: x\n",
            b"data: x\n\n\n",
            b"data: 0123456789\n\n",
            b"data: 012345678\n\n",
            b"\n",
            b"",
            b"event: e\rdata: y\n\n",
        ];
        for b in before {
            for c in chunks {
                let mut tok = Tokenizer::new(15);
                tok.feed(b, |_, _| {});
                let Some(events) = tok.whole_events(c) else {
                    assert!(!(tok.at_clean_boundary() && c.ends_with(b"\n\n")));
                    continue;
                };
                let mut tokens = Vec::new();
                tok.feed(c, |t, _| {
                    tokens.push(match t {
                        Token::Line { text, .. } => Some(text.to_vec()),
                        _ => None,
                    })
                });
                let case = format!("{:?} then {:?}", String::from_utf8_lossy(b), String::from_utf8_lossy(c));
                assert!(tok.at_clean_boundary(), "{case}");
                assert_eq!(events.first_line().map(<[u8]>::to_vec), tokens[0].clone(), "{case}");
                let only = match tokens.as_slice() {
                    [Some(line), None] => Some(line.clone()),
                    _ => None,
                };
                assert_eq!(events.only_line().map(<[u8]>::to_vec), only, "{case}");
            }
        }
    }

    #[test]
    fn null_usage_keys_are_passed_over_on_their_line_only() {
        let find = |s: &str| find_usage_key(s.as_bytes(), 0);
        assert_eq!(find(r#"{"usage":null}"#), None);
        assert_eq!(find("{\"usage\" :\t null,\"x\":1}"), None);
        assert_eq!(find(r#"{"usage":null,"usage":{"prompt_tokens":1}}"#), Some(14));
        assert_eq!(find(r#"{"usage":{"prompt_tokens":1}}"#), Some(1));
        assert_eq!(find(r#"{"usage":nul"#), Some(1));
        assert_eq!(find(r#"{"usage""#), Some(1));
        assert_eq!(find(r#"{"usage":"null"}"#), Some(1));
        // A line ending between key and value: the event's data may give it another value.
        assert_eq!(find("data: {\"usage\"\n:null\ndata: :{}}"), Some(7));
        assert_eq!(find("data: {\"usage\":\r\nnull}"), Some(7));
        assert_eq!(find_usage_key(b"x\"usage\":1", 2), None);
        assert_eq!(find_usage_key(b"x", 5), None);
    }

    /// The key search finds what the general substring searcher finds, from any start: keys
    /// after many bytes of the searched pair, overlapping and cut keys, short and long texts.
    #[test]
    fn the_key_search_agrees_with_the_substring_search() {
        let mut cases: Vec<Vec<u8>> = [
            &b""[..],
            b"\"usage\"",
            b"\"usag\"usage\"",
            b"ggggggggggggggggggg\"usage\"gg\"usage\"",
            b"\"usage",
            b"usage\"",
            b"\"usagg\"usage\"\"usage\"",
            b"\"logprobs\":null,\"usage\":{}",
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect();
        // Pseudo-random strings over the key's bytes and one other.
        let mut x: u32 = 7;
        for len in [10, 30, 80, 200] {
            for _ in 0..200 {
                let s = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        b"\"usagex"[((x >> 16) % 7) as usize]
                    })
                    .collect();
                cases.push(s);
            }
        }
        // The key at every place of a long text full of the searched pair (`u`, `g` three apart).
        for at in 0..120 {
            let mut s = b"uxxg".repeat(32);
            s[at..at + 7].copy_from_slice(KEY);
            cases.push(s);
        }
        for g in 0..20 {
            let mut s = vec![b'g'; g];
            s.extend_from_slice(b"\"usage\"g\"usage\"");
            cases.push(s);
        }
        for hay in &cases {
            for from in 0..=hay.len() + 2 {
                let want = hay.get(from..).and_then(|h| memchr::memmem::find(h, KEY)).map(|i| i + from);
                assert_eq!(find_key(hay, from), want, "{:?} from {from}", String::from_utf8_lossy(hay));
            }
        }
        assert_eq!(find_key(b"x", usize::MAX), None);
    }

    /// What a tokenizer reports for `chunks`, as text: lines, `~` for a long line, `|` for a
    /// blank line (events end); also checks every offset lies inside its chunk.
    fn tokens(chunks: &[&[u8]], max_line: usize) -> String {
        let mut t = Tokenizer::new(max_line);
        let mut out = String::new();
        for c in chunks {
            let mut last = 0;
            t.feed(c, |tok, end| {
                assert!(end > last && end <= c.len(), "offset {end} after {last} in {}", c.len());
                last = end;
                match tok {
                    Token::Line { text, .. } => {
                        out.push_str(std::str::from_utf8(text).unwrap());
                        out.push(';');
                    }
                    Token::LongLine => out.push('~'),
                    Token::Blank { .. } => out.push('|'),
                    Token::CrLfTail => {}
                }
            });
        }
        out
    }

    const STREAM: &str = "event: e\ndata: one\n\n: c\ndata: two\ndata: 2\n\ndata: [DONE]\n\n";
    const WANT: &str = "event: e;data: one;|: c;data: two;data: 2;|data: [DONE];|";

    fn with_eol(eol: &str) -> Vec<u8> {
        STREAM.replace('\n', eol).into_bytes()
    }

    #[test]
    fn every_line_ending_gives_the_same_tokens() {
        for eol in ["\n", "\r\n", "\r"] {
            assert_eq!(tokens(&[&with_eol(eol)], MAX_LINE), WANT, "{eol:?}");
        }
        // Mixed endings in one stream.
        assert_eq!(tokens(&[b"data: a\r\ndata: b\rdata: c\n\r\n"], MAX_LINE), "data: a;data: b;data: c;|");
    }

    #[test]
    fn every_split_point_gives_the_same_tokens() {
        for eol in ["\n", "\r\n", "\r"] {
            let s = with_eol(eol);
            for i in 0..=s.len() {
                assert_eq!(tokens(&[&s[..i], &s[i..]], MAX_LINE), WANT, "{eol:?} split at {i}");
                for j in i..=s.len() {
                    assert_eq!(tokens(&[&s[..i], &s[i..j], &s[j..]], MAX_LINE), WANT, "{eol:?} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn a_crlf_split_between_cr_and_lf_is_one_line_ending() {
        let mut t = Tokenizer::default();
        let mut seen = Vec::new();
        t.feed(b"data: a\r", |tok, end| seen.push(format!("{tok:?}@{end}")));
        t.feed(b"\n\r", |tok, end| seen.push(format!("{tok:?}@{end}")));
        t.feed(b"\n", |tok, end| seen.push(format!("{tok:?}@{end}")));
        assert_eq!(
            seen,
            [
                "Line { text: [100, 97, 116, 97, 58, 32, 97], eol: [13] }@8",
                "CrLfTail@1",
                "Blank { eol: [13] }@2",
                "CrLfTail@1"
            ]
        );
        assert!(t.at_boundary());
    }

    #[test]
    fn lines_are_bounded() {
        assert_eq!(tokens(&[b"data: 12345\ndata: 1\n\n"], 8), "~data: 1;|");
        assert_eq!(tokens(&[b"data: 12", b"345\rdata: 1\r\r"], 8), "~data: 1;|");
        assert_eq!(tokens(&[b"data", b": 1", b"2345", b"\r\n\r\n"], 8), "~|");
        // The bound never keeps more than `max_line` bytes between calls.
        let mut t = Tokenizer::new(8);
        t.feed(&[b'x'; 100], |_, _| {});
        assert!(t.line.capacity() <= 8);
    }

    #[test]
    fn boundaries_with_any_line_ending_and_split() {
        let after = |chunks: &[&str]| {
            let mut b = Boundary::default();
            for c in chunks {
                b.feed(c.as_bytes());
            }
            b.at_boundary()
        };
        assert!(after(&[]));
        assert!(after(&["data: a\n\n"]));
        assert!(after(&["data: a\r\n\r\n"]));
        assert!(after(&["data: a\r\r"]));
        assert!(after(&["data: a\r\n", "\r\n"]));
        assert!(after(&["data: a\n", "\n"]));
        assert!(after(&["data: a\r", "\r"]));
        assert!(!after(&["data: a\n"]));
        assert!(!after(&["data: a\r\n"]));
        assert!(!after(&["data: a\r"]));
        assert!(!after(&["data: a\n\ndata: b"]));
        assert!(!after(&["event: x\ndata: a\n"]));
        assert!(!after(&["data: a\r\n\r\nda", "ta: b\r"]));
        assert!(after(&["data: a\r\n\r\nda", "ta: b\r", "\n\r\n"]));
    }

    #[test]
    fn event_data_joins_data_lines() {
        assert_eq!(event_data(b"event: x\r\ndata: {\"a\":\rdata:1}\r\r").unwrap(), b"{\"a\":\n1}");
        assert_eq!(event_data(b": only a comment\n\n").unwrap(), b"");
        assert!(contains(b"{\"usage\":1}", b"\"usage\""));
        assert!(!contains(b"{}", b"\"usage\""));
        assert!(contains_usage_key(b"data: {\"choices\":[],\"usage\":{}}"));
        assert!(!contains_usage_key(b"data: {\"usage_x\":1, \"usage\" }"[..20].as_ref()));
        assert!(!contains_usage_key(b""));
    }
}
