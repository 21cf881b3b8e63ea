//! Sealing: XChaCha20-Poly1305 with a random 24-byte nonce, encoded as URL-safe base64 without
//! padding (so a sealed value fits an `Mcp-Session-Id` header and a legacy endpoint URL's
//! query alike). The plaintext names the backend (provider name and socket address), carries
//! the backend's own token (its session id, or the legacy `session_id` query value), the name
//! of the API key the session was opened with, and when it was sealed (Unix seconds, so that
//! gateway instances sharing `mcp.session_key` agree):
//! `2 | issued u64 | len u16, key name | len u16, provider | len u16, address | token`
//! (integers big-endian). Tampering or another sealing key makes [`Sealer::open`] fail; so does
//! age beyond `mcp.session_ttl`. Values sealed before the format carried a time (no leading 2)
//! are refused: their age cannot be told, so the client initializes a new session.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NONCE_LEN: usize = 24;
const FORMAT: u8 = 2;
/// `mcp.session_ttl` unless configured.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far in the future an issue time may lie (clocks of instances sharing a key differ a little).
const CLOCK_SKEW_SECS: u64 = 300;
/// Longest sealed value accepted (a session id header is small; this bounds the work).
const MAX_SEALED: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value")]
    Malformed,
    #[error("the sealed value does not authenticate")]
    Forged,
    #[error("the sealed value is older than mcp.session_ttl")]
    Expired,
}

/// What a sealed value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub provider: String,
    pub backend: SocketAddr,
    /// The backend's own session id (or legacy session token).
    pub token: String,
    /// Name of the API key the session belongs to; another key may not use it.
    pub key: String,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    ttl: Duration,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Self {
        Sealer { cipher: XChaCha20Poly1305::new(&key.into()), ttl: DEFAULT_TTL }
    }

    /// Sealed values older than `ttl` are refused (`mcp.session_ttl`).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A 32-byte key as 64 hex digits or base64 (standard or URL-safe, padded or not).
    pub fn from_text(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("is empty; set 32 random bytes, e.g. `openssl rand -hex 32`".into());
        }
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            STANDARD.decode(t).ok().or_else(|| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok())
        };
        match bytes {
            Some(b) if b.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&b);
                Ok(Sealer::new(key))
            }
            Some(b) => Err(format!("must be 32 bytes (64 hex digits or base64); it decodes to {} bytes", b.len())),
            None => Err("must be 32 bytes as 64 hex digits or base64 (`openssl rand -hex 32`)".into()),
        }
    }

    pub fn seal(&self, p: &Pinned) -> String {
        self.seal_at(p, unix_now())
    }

    /// Seals `p` as issued at `issued` (Unix seconds).
    pub fn seal_at(&self, p: &Pinned, issued: u64) -> String {
        let mut plain = Vec::with_capacity(32 + p.key.len() + p.provider.len() + p.token.len());
        plain.push(FORMAT);
        plain.extend_from_slice(&issued.to_be_bytes());
        for field in [p.key.as_bytes(), p.provider.as_bytes(), p.backend.to_string().as_bytes()] {
            // Key and provider names come from the config, addresses are short: u16 suffices;
            // a longer name is cut, which only makes the value fail to match later.
            let len = field.len().min(u16::MAX as usize);
            plain.extend_from_slice(&(len as u16).to_be_bytes());
            plain.extend_from_slice(&field[..len]);
        }
        plain.extend_from_slice(p.token.as_bytes());
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption cannot fail for in-memory buffers of this size; an empty tag would be
        // refused by `open`, so nothing unauthenticated can come out of this.
        let sealed = self.cipher.encrypt(nonce, plain.as_slice()).unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<Pinned, SealError> {
        self.open_at(sealed, unix_now())
    }

    /// Opens a sealed value as of `now` (Unix seconds).
    pub fn open_at(&self, sealed: &str, now: u64) -> Result<Pinned, SealError> {
        if sealed.len() > MAX_SEALED {
            return Err(SealError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed.trim()).map_err(|_| SealError::Malformed)?;
        if raw.len() <= NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let plain = self.cipher.decrypt(XNonce::from_slice(nonce), body).map_err(|_| SealError::Forged)?;
        let mut r = Reader(&plain);
        if r.take(1) != Some(&[FORMAT][..]) {
            return Err(SealError::Malformed);
        }
        let issued = r.take(8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or(SealError::Malformed)?;
        let key = r.text()?;
        let provider = r.text()?;
        let backend = r.text()?.parse().map_err(|_| SealError::Malformed)?;
        let token = String::from_utf8(r.0.to_vec()).map_err(|_| SealError::Malformed)?;
        if issued > now.saturating_add(CLOCK_SKEW_SECS) || now.saturating_sub(issued) > self.ttl.as_secs() {
            return Err(SealError::Expired);
        }
        Ok(Pinned { provider, backend, token, key })
    }
}

/// Reads the length-prefixed fields of a plaintext.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Result<String, SealError> {
        let len = self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(SealError::Malformed)?;
        let bytes = self.take(len as usize).ok_or(SealError::Malformed)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| SealError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> Pinned {
        Pinned {
            provider: "mcp".into(),
            backend: "127.0.0.1:9000".parse().unwrap(),
            token: "abc\n123".into(),
            key: "alice".into(),
        }
    }

    #[test]
    fn expires_after_the_ttl() {
        let s = Sealer::new([7; 32]).with_ttl(Duration::from_secs(3600));
        let sealed = s.seal_at(&pinned(), 1_000_000);
        assert_eq!(s.open_at(&sealed, 1_000_000 + 3600).unwrap(), pinned());
        assert_eq!(s.open_at(&sealed, 1_000_000 + 3601), Err(SealError::Expired));
        assert_eq!(s.open_at(&sealed, 1_000_000 - 301), Err(SealError::Expired), "issued in the future");
        assert_eq!(s.open_at(&sealed, 1_000_000 - 300).unwrap().key, "alice");
        let day = Sealer::new([7; 32]);
        let sealed = day.seal_at(&pinned(), 1_000_000);
        assert!(day.open_at(&sealed, 1_000_000 + 24 * 3600).is_ok());
        assert_eq!(day.open_at(&sealed, 1_000_000 + 24 * 3600 + 1), Err(SealError::Expired), "default 24h");
    }

    /// The format before issue times and key names: authentic, but its age cannot be told.
    #[test]
    fn values_without_an_issue_time_are_refused() {
        let s = Sealer::new([7; 32]);
        let nonce = [1u8; NONCE_LEN];
        let old = s.cipher.encrypt(XNonce::from_slice(&nonce), &b"mcp\n127.0.0.1:9000\nabc123"[..]).unwrap();
        let sealed = URL_SAFE_NO_PAD.encode([&nonce[..], &old].concat());
        assert_eq!(s.open(&sealed), Err(SealError::Malformed));
    }

    #[test]
    fn round_trip_and_fresh_nonce() {
        let s = Sealer::new([7; 32]);
        let a = s.seal(&pinned());
        let b = s.seal(&pinned());
        assert_ne!(a, b, "a random nonce makes every seal different");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_eq!(s.open(&a).unwrap(), pinned());
    }

    #[test]
    fn tampering_is_refused() {
        let s = Sealer::new([7; 32]);
        let sealed = s.seal(&pinned());
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(s.open(&URL_SAFE_NO_PAD.encode(&raw)), Err(SealError::Forged));
        assert_eq!(s.open("not base64 !!"), Err(SealError::Malformed));
        assert_eq!(s.open("c2hvcnQ"), Err(SealError::Malformed));
    }

    #[test]
    fn another_key_is_refused() {
        let sealed = Sealer::new([7; 32]).seal(&pinned());
        assert_eq!(Sealer::new([8; 32]).open(&sealed), Err(SealError::Forged));
    }

    #[test]
    fn key_forms() {
        assert!(Sealer::from_text(&"ab".repeat(32)).is_ok());
        assert!(Sealer::from_text(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(Sealer::from_text(&URL_SAFE_NO_PAD.encode([1u8; 32])).is_ok());
        assert!(Sealer::from_text(&STANDARD.encode([1u8; 16])).unwrap_err().contains("16 bytes"));
        assert!(Sealer::from_text("").is_err());
        assert!(Sealer::from_text("???").is_err());
    }
}
