//! The WebSocket frame tracker a tunnel uses to find frame ends and close frames.
//!
//! Input: a mode byte, then data. Properties:
//! - raw mode (any bytes): the tracker ends in the same state whether the bytes come whole,
//!   in three pieces at fuzz-chosen points, or one at a time;
//! - frame mode: the data describes frames (opcode, mask, payload length, and which of the
//!   7-, 16- or 64-bit length forms carries it, minimal or not); the frames are built, fed in
//!   fuzz-chosen chunk sizes, and the tracker is at a boundary after exactly the bytes that
//!   end a frame, and has seen a close exactly when a close frame was sent: lengths round-trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::proxy::ws_frames::FrameTracker;

fn state(t: &FrameTracker) -> String {
    format!("{t:?}")
}

fn feed_all(chunks: &[&[u8]]) -> FrameTracker {
    let mut t = FrameTracker::default();
    for c in chunks {
        t.feed(c);
    }
    t
}

fn raw(params: &[u8], body: &[u8]) {
    let a = usize::from(params[0]) * body.len() / 255;
    let b = usize::from(params[1]) * body.len() / 255;
    let (a, b) = (a.min(b), a.max(b));
    let whole = state(&feed_all(&[body]));
    assert_eq!(state(&feed_all(&[&body[..a], &body[a..b], &body[b..]])), whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(state(&feed_all(&bytes)), whole);
}

/// Builds one frame from four descriptor bytes; the payload is filler (never inspected).
fn frame(d: &[u8], out: &mut Vec<u8>) -> u8 {
    let opcode = d[0] & 0x0F;
    let masked = d[0] & 0x80 != 0;
    let n = usize::from(u16::from_be_bytes([d[2], d[3]]));
    // Mostly short payloads; some just past 16 bits, where only the 64-bit form fits.
    let len = if d[1] & 0x80 != 0 { 65_536 + n % 64 } else { n % 2048 };
    out.push((d[0] & 0x70) | 0x80 | opcode);
    let m = if masked { 0x80 } else { 0 };
    // The smallest form that fits, or a longer one (RFC 6455 wants minimal; the tracker must
    // still follow the length it is given).
    let form = match (d[1] % 3, len) {
        (0, n) if n < 126 => 0,
        (0 | 1, n) if n <= 0xFFFF => 1,
        _ => 2,
    };
    match form {
        0 => out.push(m | len as u8),
        1 => {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[d[1], d[2], d[3], d[0]]);
    }
    out.resize(out.len() + len, d[3]);
    opcode
}

fn frames(body: &[u8]) {
    let (desc, sizes) = body.split_at((body.len() / 2) & !3);
    let mut stream = Vec::new();
    let mut ends = vec![0];
    let mut close = false;
    for d in desc.chunks_exact(4).take(16) {
        if stream.len() > 200_000 {
            break;
        }
        close |= frame(d, &mut stream) == 0x8;
        ends.push(stream.len());
    }
    let mut t = FrameTracker::default();
    let mut fed = 0;
    let mut sizes = sizes.iter().cycle();
    while fed < stream.len() {
        let size = sizes.next().map_or(stream.len(), |&s| usize::from(s) * 37 + 1);
        let end = (fed + size).min(stream.len());
        t.feed(&stream[fed..end]);
        fed = end;
        assert_eq!(t.at_boundary(), ends.contains(&fed), "boundary wrong after {fed} of {} bytes", stream.len());
    }
    assert!(t.at_boundary());
    assert_eq!(t.close_seen(), close);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if rest.len() >= 2 {
            raw(&rest[..2], &rest[2..]);
        }
    } else {
        frames(rest);
    }
});
