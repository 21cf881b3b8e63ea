//! The SSE event splitter and the usage observer on any response body, split anywhere.
//!
//! Input: two bytes of parameters (two split points, the body kind), then the body.
//! Properties:
//! - the splitter gives the same events, the same lines and the same unfinished rest however
//!   the body is cut into chunks (here: whole, and in three pieces at fuzz-chosen points);
//! - every event's lines add up to its length, no line text holds CR or LF, and every line
//!   ending is LF, CRLF or CR;
//! - the usage observer reaches the same usage, `[DONE]` and event count whole, in three
//!   pieces and one byte at a time;
//! - for a body without bare CRs (the observer's documented line endings) that ends at an
//!   event boundary, the observer counts exactly the `data:` lines the splitter finds, and
//!   sees `[DONE]` exactly when one of them says so.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcas::proxy::stream::UsageObserver;
use mcas::sse;

/// One event: its bytes and its lines as (text, line ending).
type Event = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// Feeds `chunks` into a buffer the way the proxy does, taking out each complete event.
fn split(chunks: &[&[u8]]) -> (Vec<Event>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some((len, lines)) = sse::next_event(&buf) {
            assert!(len > 0 && len <= buf.len());
            assert_eq!(sse::event_len(&buf), Some(len));
            let lines: Vec<_> = lines.iter().map(|l| (l.text.to_vec(), l.eol.to_vec())).collect();
            let covered: usize = lines.iter().map(|(t, e)| t.len() + e.len()).sum();
            let blank = len - covered;
            assert!((1..=2).contains(&blank), "an event ends with one blank line ending");
            for (t, e) in &lines {
                assert!(!t.contains(&b'\n') && !t.contains(&b'\r'));
                assert!(matches!(e.as_slice(), b"\n" | b"\r\n" | b"\r"), "line ending {e:?}");
            }
            events.push((buf[..len].to_vec(), lines));
            buf.drain(..len);
        }
    }
    (events, buf)
}

fn observe(kind: &str, chunks: &[&[u8]]) -> (Option<mcas::proxy::stream::Usage>, bool, u64) {
    let mut o = UsageObserver::default();
    o.start(Some(kind));
    for c in chunks {
        o.observe(Some(&Bytes::copy_from_slice(c)), false);
    }
    o.observe(None, true);
    (o.usage, o.done, o.events)
}

fn bare_cr(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| b == b'\r' && body.get(i + 1) != Some(&b'\n'))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (params, body) = data.split_at(2);
    let mut cuts = [usize::from(params[0]) * body.len() / 255, usize::from(params[1] & 0x7F) * body.len() / 127];
    cuts.sort_unstable();
    let pieces: [&[u8]; 3] = [&body[..cuts[0]], &body[cuts[0]..cuts[1]], &body[cuts[1]..]];

    let whole = split(&[body]);
    assert_eq!(split(&pieces), whole, "chunking changed the events");

    let kind = if params[1] & 0x80 == 0 { "text/event-stream" } else { "application/json" };
    let at_once = observe(kind, &[body]);
    assert_eq!(observe(kind, &pieces), at_once, "chunking changed what the observer saw");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(observe(kind, &bytes), at_once, "byte-at-a-time changed what the observer saw");

    let (events, rest) = whole;
    if kind == "text/event-stream" && rest.is_empty() && !bare_cr(body) {
        let data_lines: Vec<&[u8]> = events
            .iter()
            .flat_map(|(_, lines)| lines.iter())
            .filter_map(|(t, _)| t.strip_prefix(b"data:"))
            .map(|p| p.strip_prefix(b" ").unwrap_or(p))
            .collect();
        assert_eq!(at_once.2, data_lines.len() as u64, "observer and splitter disagree on data lines");
        assert_eq!(at_once.1, data_lines.iter().any(|p| *p == b"[DONE]"), "observer and splitter disagree on [DONE]");
    }
});
