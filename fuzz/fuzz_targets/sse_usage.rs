//! The SSE tokenizer and the usage observer on any response body, split anywhere.
//!
//! Input: two bytes of parameters (two split points, the body kind), then the body.
//! Properties:
//! - the tokenizer reports the same lines, long lines and blank lines however the body is cut
//!   into chunks (here: whole, in three pieces at fuzz-chosen points, and one byte at a time);
//! - no line text holds CR or LF, every line ending is LF, CRLF or CR (a CR LF cut between
//!   its two bytes is a CR, then the LF reported on its own), and each token's offset lies
//!   inside its chunk, after the previous one;
//! - the usage observer reaches the same usage, `[DONE]` and event count whole, in three
//!   pieces and one byte at a time;
//! - the observer counts exactly the `data:` lines the tokenizer finds, and sees `[DONE]`
//!   exactly when one of them says so, whatever the line endings.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcas::proxy::usage::UsageObserver;
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

fn observe(kind: &str, chunks: &[&[u8]]) -> (Option<mcas::proxy::usage::Usage>, bool, u64) {
    let mut o = UsageObserver::default();
    o.start(Some(kind));
    for c in chunks {
        o.observe(Some(&Bytes::copy_from_slice(c)), false);
    }
    o.observe(None, true);
    (o.usage, o.done, o.events)
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

    if kind == "text/event-stream" {
        let data_lines: Vec<&[u8]> = whole.iter().flatten().filter_map(|t| sse::field(t, b"data")).collect();
        assert_eq!(at_once.2, data_lines.len() as u64, "observer and tokenizer disagree on data lines");
        assert_eq!(at_once.1, data_lines.iter().any(|p| *p == b"[DONE]"), "observer and tokenizer disagree on [DONE]");
    }
});
