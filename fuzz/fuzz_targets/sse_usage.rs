//! The SSE tokenizer and the usage observer on any response body, split anywhere.
//!
//! Input: two bytes of parameters (two split points, the body kind), then the body.
//! Properties:
//! - the tokenizer reports the same lines, long lines and blank lines however the body is cut
//!   into chunks (here: whole, in three pieces at fuzz-chosen points, and one byte at a time);
//! - no line text holds CR or LF, every line ending is LF, CRLF or CR (a CR LF cut between
//!   its two bytes is a CR, then the LF reported on its own), and each token's offset lies
//!   inside its chunk, after the previous one;
//! - the usage observer reaches the same usage, and times a first event or not, whole, in
//!   three pieces and one byte at a time (it passes over chunks of whole events without a
//!   usage key once it has timed the first event: that must not change what it reaches);
//! - for each chunk the observer returns where the chunk's first usage key is, as
//!   `sse::find_usage_key` finds it, and the usage line it read with `is_usage_chunk`'s answer
//!   on that line (the usage strip relies on both);
//! - the observer times a first event exactly when the tokenizer finds a `data:` line that is
//!   not `[DONE]`, whatever the line endings;
//! - the usage strip gives the same bytes whole, in three pieces and one byte at a time, with
//!   the observer's hints as with the usage key alone, and passes the body unchanged when it
//!   removes nothing.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcas::proxy::rewrite::SseStrip;
use mcas::proxy::usage::{self, ChunkHint, UsageObserver};
use mcas::sse::{self, Token, Tokenizer};

/// What the tokenizer reported: `Some(line text)` per line, `None` per long line, an empty
/// text for a blank line is impossible (so `Some(vec![])` marks a blank line).
fn tokens(chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut t = Tokenizer::default();
    let mut out = Vec::new();
    for c in chunks {
        let mut last = 0;
        t.feed(c, |tok, end| {
            assert!(end > last && end <= c.len(), "offset {end} after {last} in a chunk of {}", c.len());
            last = end;
            match tok {
                Token::Line { text, eol } => {
                    assert!(!text.is_empty() && !text.contains(&b'\n') && !text.contains(&b'\r'));
                    assert!(matches!(eol, b"\n" | b"\r\n" | b"\r"), "line ending {eol:?}");
                    out.push(Some(text.to_vec()));
                }
                Token::LongLine => out.push(None),
                Token::Blank { eol } => {
                    assert!(matches!(eol, b"\n" | b"\r\n" | b"\r"), "line ending {eol:?}");
                    out.push(Some(Vec::new()));
                }
                Token::CrLfTail => assert_eq!(end, 1, "only a chunk's first byte completes a CR LF"),
            }
        });
    }
    out
}

fn observe(kind: &str, chunks: &[&[u8]]) -> (Option<mcas::proxy::usage::Usage>, bool) {
    let mut o = UsageObserver::default();
    o.start(Some(kind));
    let sse = kind == "text/event-stream";
    for c in chunks {
        let hint = o.observe(Some(&Bytes::copy_from_slice(c)), false);
        assert_eq!(hint.key, sse.then(|| sse::find_usage_key(c, 0)).flatten(), "the chunk's usage key");
        if let Some((start, len, verdict)) = hint.walked {
            assert_eq!(verdict, usage::is_usage_chunk(&c[start..start + len]), "the usage line's verdict");
        }
    }
    assert_eq!(o.observe(None, true), ChunkHint::default());
    (o.usage, o.first_event_at.is_some())
}

/// The usage strip's output over `chunks`, and whether it removed an event; the same with the
/// hints a usage observer gives (as in the gateway) and with the usage key alone.
fn strip(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut o = UsageObserver::default();
    o.start(Some("text/event-stream"));
    let (mut s, mut keyed) = (SseStrip::default(), SseStrip::default());
    let (mut out, mut keyed_out) = (Vec::new(), Vec::new());
    let last = chunks.len().saturating_sub(1);
    for (i, c) in chunks.iter().enumerate() {
        let bytes = Bytes::copy_from_slice(c);
        let hint = o.observe(Some(&bytes), false);
        let mut b = Some(bytes.clone());
        s.filter(&mut b, i == last, hint);
        if let Some(b) = b {
            out.extend_from_slice(&b);
        }
        let mut b = Some(bytes);
        keyed.filter(&mut b, i == last, ChunkHint::key(sse::find_usage_key(c, 0)));
        if let Some(b) = b {
            keyed_out.extend_from_slice(&b);
        }
    }
    assert_eq!((&out, s.removed), (&keyed_out, keyed.removed), "the observer's hints changed what the strip passed");
    (out, s.removed)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (params, body) = data.split_at(2);
    let mut cuts = [usize::from(params[0]) * body.len() / 255, usize::from(params[1] & 0x7F) * body.len() / 127];
    cuts.sort_unstable();
    let pieces: [&[u8]; 3] = [&body[..cuts[0]], &body[cuts[0]..cuts[1]], &body[cuts[1]..]];
    let bytes: Vec<&[u8]> = body.chunks(1).collect();

    let whole = tokens(&[body]);
    assert_eq!(tokens(&pieces), whole, "chunking changed the tokens");
    assert_eq!(tokens(&bytes), whole, "byte-at-a-time changed the tokens");

    let kind = if params[1] & 0x80 == 0 { "text/event-stream" } else { "application/json" };
    let at_once = observe(kind, &[body]);
    assert_eq!(observe(kind, &pieces), at_once, "chunking changed what the observer saw");
    assert_eq!(observe(kind, &bytes), at_once, "byte-at-a-time changed what the observer saw");

    let stripped = strip(&[body]);
    assert_eq!(strip(&pieces), stripped, "chunking changed what the strip passed");
    if !bytes.is_empty() {
        assert_eq!(strip(&bytes), stripped, "byte-at-a-time changed what the strip passed");
    }
    if !stripped.1 {
        assert_eq!(stripped.0, body, "the strip changed a body it removed nothing from");
    }

    if kind == "text/event-stream" {
        let data_lines: Vec<&[u8]> = whole.iter().flatten().filter_map(|t| sse::field(t, b"data")).collect();
        assert_eq!(
            at_once.1,
            data_lines.iter().any(|p| *p != b"[DONE]"),
            "observer and tokenizer disagree on a first event"
        );
    }
});
