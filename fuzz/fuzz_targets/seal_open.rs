//! The sealed MCP session id: `Sealer::open` on any text, and on mutations of a real seal.
//!
//! Input: a mode byte, then data. Properties:
//! - any text: `open` answers without panicking;
//! - seal mode: a `Pinned` built from the data (key name, provider, backend address, token) opens to
//!   itself; the same value under another key is refused as forged; and after one
//!   fuzz-chosen edit (change, insert or delete a character, truncate, append) the edited
//!   text never opens, unless it differs from the original only by surrounding whitespace
//!   (which `open` trims: the same bytes, not a forgery).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::mcp::seal::{Pinned, SealError, Sealer};
use std::net::{IpAddr, SocketAddr};

const KEY: [u8; 32] = [0x42; 32];

fn pinned(data: &[u8]) -> Option<(Pinned, &[u8])> {
    if data.len() < 8 {
        return None;
    }
    let (head, rest) = data.split_at(8);
    let ip: IpAddr = if head[0] & 1 == 0 {
        [head[1], head[2], head[3], head[4]].into()
    } else {
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&head[1..5]);
        v6[15] = head[0];
        v6.into()
    };
    let backend = SocketAddr::new(ip, u16::from_be_bytes([head[5], head[6]]));
    let split = usize::from(head[7]).min(rest.len());
    let (text, edit) = rest.split_at(split);
    let text = String::from_utf8_lossy(text);
    let mut parts = text.splitn(3, '|');
    let (key, provider, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Fields are length-prefixed in the seal, so any text survives; the configuration still
    // refuses control characters in provider names (src/config/compile.rs).
    let pinned = Pinned { provider: provider.to_string(), backend, token: token.to_string(), key: key.to_string() };
    Some((pinned, edit))
}

fn edited(sealed: &str, edit: &[u8]) -> String {
    let mut chars: Vec<char> = sealed.chars().collect();
    let op = edit.first().copied().unwrap_or(0);
    let pos = usize::from(edit.get(1).copied().unwrap_or(0)) * chars.len() / 255;
    let c = char::from(edit.get(2).copied().unwrap_or(b'A'));
    match op % 5 {
        0 if pos < chars.len() => chars[pos] = c,
        1 => chars.insert(pos, c),
        2 if pos < chars.len() => {
            chars.remove(pos);
        }
        3 => chars.truncate(pos),
        _ => chars.push(c),
    }
    chars.into_iter().collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sealer = Sealer::new(KEY);
    if mode & 1 == 0 {
        let _ = sealer.open(&String::from_utf8_lossy(rest));
        return;
    }
    let Some((p, edit)) = pinned(rest) else { return };
    let sealed = sealer.seal(&p);
    assert_eq!(sealer.open(&sealed), Ok(p.clone()), "a seal does not open to what it sealed");
    assert_eq!(Sealer::new([0x43; 32]).open(&sealed), Err(SealError::Forged));
    let other = edited(&sealed, edit);
    if other.trim() != sealed {
        assert!(sealer.open(&other).is_err(), "an edited seal opened: {other:?}");
    }
});
