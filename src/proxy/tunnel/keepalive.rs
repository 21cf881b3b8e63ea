//! `routes[].ping`: the gateway's own WebSocket keepalive towards the client of a tunnel. A
//! client silent for `interval` gets a ping (at a frame boundary of the backend's bytes to
//! it); when `timeout` passes with no pong (nor any other frame) from it, the relay closes the
//! tunnel with 1001 both ways. The pongs answering the gateway's pings are the gateway's:
//! [`PongFilter`] takes them out of the client's bytes before the backend sees them.

use crate::routes::Ping;
use bytes::Bytes;
use tokio::time::Instant;

/// Payload of the gateway's pings: a fixed prefix and 4 random bytes, so the client's pong
/// can be told from its answers to the backend's pings (which carry the backend's payload).
const TAG: [u8; 4] = *b"mcas";
const PAYLOAD_LEN: usize = 8;

/// What the keepalive asks the relay to do at its deadline.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send this ping frame to the client (when the client direction is at a frame boundary).
    Ping,
    /// A ping went unanswered: close the tunnel.
    Expired,
    Nothing,
}

pub struct Keepalive {
    ping: Ping,
    /// The payload of the last ping sent (its pong is filtered out).
    payload: Option<[u8; PAYLOAD_LEN]>,
    /// When the unanswered ping went out.
    sent_at: Option<Instant>,
    /// When the client last sent a frame (or the tunnel opened).
    last_heard: Instant,
    filter: PongFilter,
}

impl Keepalive {
    pub fn new(ping: Ping) -> Self {
        Keepalive { ping, payload: None, sent_at: None, last_heard: Instant::now(), filter: PongFilter::default() }
    }

    /// When [`Self::due`] next has something to say.
    pub fn deadline(&self) -> Instant {
        match self.sent_at {
            Some(at) => at + self.ping.timeout,
            None => self.last_heard + self.ping.interval,
        }
    }

    pub fn due(&self, now: Instant) -> Due {
        match self.sent_at {
            Some(at) if now >= at + self.ping.timeout => Due::Expired,
            Some(_) => Due::Nothing,
            None if now >= self.last_heard + self.ping.interval => Due::Ping,
            None => Due::Nothing,
        }
    }

    /// The ping frame to queue for the client now (server to client: unmasked).
    pub fn ping_frame(&mut self, now: Instant) -> Bytes {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..4].copy_from_slice(&TAG);
        payload[4..].copy_from_slice(&rand::random::<[u8; 4]>());
        self.payload = Some(payload);
        self.sent_at = Some(now);
        let mut frame = Vec::with_capacity(2 + PAYLOAD_LEN);
        frame.extend_from_slice(&[0x89, PAYLOAD_LEN as u8]);
        frame.extend_from_slice(&payload);
        Bytes::from(frame)
    }

    /// Bytes from the client: the part for the backend (without the pongs to the gateway's
    /// pings). Any complete frame from the client, forwarded or not, shows it is alive.
    pub fn heard(&mut self, data: &Bytes, now: Instant) -> Bytes {
        let (out, frames) = self.filter.filter(data, self.payload.as_ref());
        if frames > 0 {
            self.sent_at = None;
            self.last_heard = now;
        }
        out
    }
}

/// Follows the frames of the client's bytes and removes the pongs whose payload is the
/// gateway's last ping. Header bytes are held until the header is whole (a frame's fate is
/// known only then); a candidate pong (8-byte payload) is held whole until compared.
#[derive(Default)]
pub struct PongFilter {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current (forwarded) frame still to pass.
    remaining: u64,
    /// A pong being held: header and payload, and the total length it will have.
    held: Vec<u8>,
    held_len: usize,
}

impl PongFilter {
    /// Returns the bytes to forward and how many frames ended in `data`. While nothing is
    /// removed or held back, what is forwarded is `data` itself (a slice of it, not a copy).
    pub fn filter(&mut self, data: &Bytes, ours: Option<&[u8; PAYLOAD_LEN]>) -> (Bytes, usize) {
        let mut out = Forward { input: data, upto: 0, copied: None };
        let mut frames = 0;
        let mut pos = 0;
        // Where the header being read began in `data` (`None`: in an earlier chunk).
        let mut header_start = if self.have > 0 { None } else { Some(0) };
        while pos < data.len() {
            if self.held_len > 0 {
                let take = (self.held_len - self.held.len()).min(data.len() - pos);
                self.held.extend_from_slice(&data[pos..pos + take]);
                pos += take;
                if self.held.len() == self.held_len {
                    frames += 1;
                    if !is_our_pong(&self.held, ours) {
                        out.push_owned(&self.held);
                    }
                    self.held.clear();
                    self.held_len = 0;
                }
                continue;
            }
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - pos) as u64) as usize;
                out.pass(pos, pos + take);
                self.remaining -= take as u64;
                pos += take;
                if self.remaining == 0 {
                    frames += 1;
                }
                continue;
            }
            if self.have == 0 {
                header_start = Some(pos);
            }
            self.header[self.have] = data[pos];
            self.have += 1;
            pos += 1;
            let Some((len, header_len)) = header_done(&self.header[..self.have]) else { continue };
            self.have = 0;
            if self.header[0] & 0x0F == 0xA && len == PAYLOAD_LEN as u64 && ours.is_some() {
                self.held.extend_from_slice(&self.header[..header_len]);
                self.held_len = header_len + PAYLOAD_LEN;
                continue;
            }
            match header_start {
                Some(from) => out.pass(from, pos),
                None => out.push_owned(&self.header[..header_len]),
            }
            self.remaining = len;
            if len == 0 {
                frames += 1;
            }
        }
        (out.finish(), frames)
    }
}

/// The bytes a chunk forwards: a prefix of the chunk as long as they are its bytes in order,
/// copied out only once something is removed or comes from an earlier chunk.
struct Forward<'a> {
    input: &'a Bytes,
    /// While `copied` is `None`: the forwarded bytes are `input[..upto]`.
    upto: usize,
    copied: Option<Vec<u8>>,
}

impl Forward<'_> {
    /// `input[from..to]` is forwarded.
    fn pass(&mut self, from: usize, to: usize) {
        match &mut self.copied {
            None if from == self.upto => self.upto = to,
            None => {
                let mut v = Vec::with_capacity(self.input.len());
                v.extend_from_slice(&self.input[..self.upto]);
                v.extend_from_slice(&self.input[from..to]);
                self.copied = Some(v);
            }
            Some(v) => v.extend_from_slice(&self.input[from..to]),
        }
    }

    /// Bytes held from an earlier chunk (or a pong that was not ours) are forwarded.
    fn push_owned(&mut self, bytes: &[u8]) {
        let (input, upto) = (self.input, self.upto);
        self.copied
            .get_or_insert_with(|| {
                let mut v = Vec::with_capacity(input.len() + bytes.len());
                v.extend_from_slice(&input[..upto]);
                v
            })
            .extend_from_slice(bytes);
    }

    fn finish(self) -> Bytes {
        match self.copied {
            Some(v) => Bytes::from(v),
            None => self.input.slice(..self.upto),
        }
    }
}

/// The payload length and header length once the header is whole.
fn header_done(h: &[u8]) -> Option<(u64, usize)> {
    if h.len() < 2 {
        return None;
    }
    let (ext, len7) = match h[1] & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + ext + if h[1] & 0x80 != 0 { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    Some((len7.unwrap_or_else(|| h[2..2 + ext].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))), need))
}

/// A whole pong frame (header and 8-byte payload) whose unmasked payload is `ours`.
fn is_our_pong(frame: &[u8], ours: Option<&[u8; PAYLOAD_LEN]>) -> bool {
    let Some(ours) = ours else { return false };
    let masked = frame.get(1).is_some_and(|b| b & 0x80 != 0);
    let (key, payload) = if masked { (frame.get(2..6), frame.get(6..)) } else { (None, frame.get(2..)) };
    let Some(payload) = payload else { return false };
    payload.len() == PAYLOAD_LEN
        && payload.iter().enumerate().all(|(i, b)| {
            let m = key.map_or(0, |k| k[i % 4]);
            b ^ m == ours[i]
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn masked(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn our_pong_is_removed_at_any_split_and_the_rest_passes() {
        let ours = *b"mcas\x01\x02\x03\x04";
        let text = masked(0x1, b"hello", [1, 2, 3, 4]);
        let their_pong = masked(0xA, b"backend1", [5, 6, 7, 8]);
        let our_pong = masked(0xA, &ours, [9, 9, 9, 9]);
        let big = masked(0x2, &[7u8; 100], [1, 1, 1, 1]);
        let stream: Vec<u8> = [text.clone(), our_pong, their_pong.clone(), big.clone()].concat();
        let expected: Vec<u8> = [text, their_pong, big].concat();
        for split in [1usize, 2, 3, 7, 16, 1000] {
            let mut f = PongFilter::default();
            let mut out = Vec::new();
            let mut frames = 0;
            for chunk in stream.chunks(split) {
                let (o, n) = f.filter(&Bytes::copy_from_slice(chunk), Some(&ours));
                out.extend_from_slice(&o);
                frames += n;
            }
            assert_eq!(out, expected, "split {split}");
            assert_eq!(frames, 4, "split {split}");
        }
    }

    #[test]
    fn whole_frames_with_nothing_removed_are_forwarded_without_a_copy() {
        let ours = *b"mcas\x01\x02\x03\x04";
        // Text and a pong of another size than the gateway's (which is held until compared).
        let chunk = Bytes::from([masked(0x1, b"hello", [1, 2, 3, 4]), masked(0xA, b"backend", [5, 6, 7, 8])].concat());
        for waiting_for in [None, Some(&ours)] {
            let (out, frames) = PongFilter::default().filter(&chunk, waiting_for);
            assert_eq!((out.as_ptr(), out.len(), frames), (chunk.as_ptr(), chunk.len(), 2));
        }
        // A header cut at the end is held back: the rest is still the chunk's own bytes.
        let mut f = PongFilter::default();
        let (out, _) = f.filter(&chunk.slice(..chunk.len() - 12), None);
        assert_eq!((out.as_ptr(), out.len()), (chunk.as_ptr(), 11));
        let (out, frames) = f.filter(&chunk.slice(chunk.len() - 12..), None);
        assert_eq!((&out[..], frames), (&chunk[11..], 1));
    }

    #[test]
    fn without_a_ping_sent_every_pong_passes() {
        let pong = masked(0xA, b"mcas\x01\x02\x03\x04", [9, 9, 9, 9]);
        let (out, frames) = PongFilter::default().filter(&Bytes::from(pong.clone()), None);
        assert_eq!((out.to_vec(), frames), (pong, 1));
    }

    #[test]
    fn a_ping_is_due_after_silence_and_expires_without_an_answer() {
        let ping = Ping { interval: Duration::from_secs(10), timeout: Duration::from_secs(5) };
        let mut k = Keepalive::new(ping);
        let t0 = k.last_heard;
        assert_eq!(k.due(t0 + Duration::from_secs(9)), Due::Nothing);
        assert_eq!(k.due(t0 + Duration::from_secs(10)), Due::Ping);
        let frame = k.ping_frame(t0 + Duration::from_secs(10));
        assert_eq!(&frame[..6], &[0x89, 8, b'm', b'c', b'a', b's']);
        assert_eq!(k.due(t0 + Duration::from_secs(14)), Due::Nothing);
        assert_eq!(k.due(t0 + Duration::from_secs(15)), Due::Expired);
        // The pong in time: removed, and the client counts as heard.
        let payload: [u8; 8] = frame[2..].try_into().unwrap();
        let out = k.heard(&Bytes::from(masked(0xA, &payload, [3, 1, 4, 1])), t0 + Duration::from_secs(12));
        assert!(out.is_empty());
        assert_eq!(k.due(t0 + Duration::from_secs(15)), Due::Nothing);
        assert_eq!(k.deadline(), t0 + Duration::from_secs(22));
    }
}
