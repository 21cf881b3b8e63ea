//! Just enough of WebSocket framing (RFC 6455 §5.2) for a tunnel to speak on its own behalf:
//! where frames end in a byte stream that passes through untouched, whether a close frame
//! went by, and the close frames the gateway sends when it drains (1001 Going Away).

/// Close frame with status 1001 (Going Away), server to client: unmasked.
pub const CLOSE_GOING_AWAY_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Close frame with status 1001, client to server: clients must mask, so the gateway (the
/// backend's client) masks with `key`.
pub fn close_going_away_to_server(key: [u8; 4]) -> [u8; 8] {
    [0x88, 0x82, key[0], key[1], key[2], key[3], 0x03 ^ key[0], 0xE9 ^ key[1]]
}

/// Follows frame boundaries in one direction of a tunnel, however frames are split across
/// reads.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    /// How many of them have arrived.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// A close frame (opcode 8) went by.
    close_seen: bool,
}

impl FrameTracker {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data = &data[take as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(len) = self.payload_len() {
                if self.header[0] & 0x0F == 0x8 {
                    self.close_seen = true;
                }
                self.remaining = len;
                self.have = 0;
            }
        }
    }

    /// The payload length once the whole header is in, else `None`.
    fn payload_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let (ext, len7) = match self.header[1] & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        Some(len7.unwrap_or_else(|| self.header[2..2 + ext].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))))
    }

    /// True when everything fed so far ends exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.have == 0
    }

    pub fn close_seen(&self) -> bool {
        self.close_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn boundaries_hold_across_any_split() {
        let mut stream = frame(0x1, b"hello", None);
        stream.extend(frame(0x2, &vec![7u8; 300], Some([1, 2, 3, 4])));
        stream.extend(frame(0x2, &vec![9u8; 70_000], None));
        stream.extend(frame(0x9, b"", Some([9, 9, 9, 9])));
        let ends = [7usize, 7 + 308, 7 + 308 + 70_010, 7 + 308 + 70_010 + 6];
        assert_eq!(*ends.last().unwrap(), stream.len());
        for split in [1usize, 2, 3, 5, 13, 1000, 65_536] {
            let mut t = FrameTracker::default();
            let mut fed = 0;
            for chunk in stream.chunks(split) {
                t.feed(chunk);
                fed += chunk.len();
                assert_eq!(t.at_boundary(), fed == 0 || ends.contains(&fed), "split {split} at {fed}");
            }
            assert!(!t.close_seen());
        }
    }

    #[test]
    fn close_frames_are_seen_and_ours_parse() {
        let mut t = FrameTracker::default();
        t.feed(&frame(0x1, b"x", None));
        assert!(!t.close_seen());
        t.feed(&CLOSE_GOING_AWAY_TO_CLIENT);
        assert!(t.close_seen() && t.at_boundary());
        let mut t = FrameTracker::default();
        let masked = close_going_away_to_server([0xA1, 0xB2, 0xC3, 0xD4]);
        assert_eq!(masked.to_vec(), frame(0x8, &[0x03, 0xE9], Some([0xA1, 0xB2, 0xC3, 0xD4])));
        t.feed(&masked);
        assert!(t.close_seen() && t.at_boundary());
    }
}
