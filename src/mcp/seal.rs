//! Sealing: XChaCha20-Poly1305 with a random 24-byte nonce, encoded as URL-safe base64 without
//! padding. The plaintext names the backend (provider name and socket address) and carries
//! the backend's own token (its session id, or the legacy `session_id` query value):
//! `provider \n address \n token`. Tampering or another key makes [`Sealer::open`] fail.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::net::SocketAddr;

const NONCE_LEN: usize = 24;
/// Longest sealed value accepted (a session id header is small; this bounds the work).
const MAX_SEALED: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value")]
    Malformed,
    #[error("the sealed value does not authenticate")]
    Forged,
}

/// What a sealed value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub provider: String,
    pub backend: SocketAddr,
    /// The backend's own session id (or legacy session token).
    pub token: String,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Self {
        Sealer { cipher: XChaCha20Poly1305::new(&key.into()) }
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
        let plain = format!("{}\n{}\n{}", p.provider, p.backend, p.token);
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption cannot fail for in-memory buffers of this size; an empty tag would be
        // refused by `open`, so nothing unauthenticated can come out of this.
        let sealed = self.cipher.encrypt(nonce, plain.as_bytes()).unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<Pinned, SealError> {
        if sealed.len() > MAX_SEALED {
            return Err(SealError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed.trim()).map_err(|_| SealError::Malformed)?;
        if raw.len() <= NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let plain = self.cipher.decrypt(XNonce::from_slice(nonce), body).map_err(|_| SealError::Forged)?;
        let text = String::from_utf8(plain).map_err(|_| SealError::Malformed)?;
        let mut parts = text.splitn(3, '\n');
        let (Some(provider), Some(addr), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let backend = addr.parse().map_err(|_| SealError::Malformed)?;
        Ok(Pinned { provider: provider.to_string(), backend, token: token.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> Pinned {
        Pinned { provider: "mcp".into(), backend: "127.0.0.1:9000".parse().unwrap(), token: "abc123".into() }
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
