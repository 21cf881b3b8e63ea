//! The key table: client keys stored as SHA-256 digests, looked up by digest (no scan of the
//! key list), confirmed with a constant-time comparison. Keys are never kept in clear.
//!
//! A fast front spares the SHA-256 on the request path: a key that was once found through its
//! digest is remembered under a 128-bit SipHash-2-4 tag of the key, keyed with a random key
//! drawn when the table is built ([`Verified`]). Later requests compute the tag (a few hundred
//! instructions instead of a SHA-256 block) and are confirmed by a constant-time comparison of
//! the whole tag. Why this keeps the promises of the digest table:
//! - Not in clear: the tag is a keyed PRF output; without the random key (never written
//!   anywhere, gone with the process) it says nothing about the key, and with it an attacker
//!   who can read this process's memory learns no more than the SHA-256 digests already give
//!   (a guess can be tested against either at hashing speed; keys are expected to be random).
//! - Forgery: a presented key passes the front only if its whole 128-bit tag equals that of a
//!   key that passed the digest check, which for a PRF with an unknown key is a 2^-128 guess.
//! - Timing: the tag costs the same for every key of a length; the map is indexed by 64 bits
//!   of the tag, so how long the lookup takes depends on tag bits an attacker cannot relate to
//!   the key, and the full tag is compared in constant time. Nothing compares key bytes.
//! - Memory: only keys that matched a digest are remembered, so the front holds at most one
//!   tag per key of the table; random keys sprayed at the gateway take the digest path (as
//!   before the front existed) and leave nothing behind.

use crate::limits::{KeyLimits, KeyState};
use crate::observe::bound::KeyMetrics;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// Glob patterns over model names (`*`, `?`, `[..]`, `{a,b}`).
#[derive(Debug, Clone, Default)]
pub struct ModelGlobs(pub Vec<String>);

impl ModelGlobs {
    pub fn allows(&self, model: &str) -> bool {
        self.0.iter().any(|p| p == "*" || glob_match::glob_match(p, model))
    }

    /// The key may use every model (`*`): a request that names none needs no default.
    pub fn allows_all(&self) -> bool {
        self.0.iter().any(|p| p == "*" || p == "**")
    }
}

/// A client key as the runtime knows it: its name, what it may use, when it is valid.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: Arc<str>,
    digest: [u8; 32],
    pub models: ModelGlobs,
    pub not_before: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub limits: KeyLimits,
    /// Admission-queue priority (`keys[].priority`): higher goes first.
    pub priority: i64,
    /// Counters; handed over to the key of the same name on reload.
    pub state: Arc<KeyState>,
    /// Its metric series, bound on first use.
    pub metrics: KeyMetrics,
}

impl KeyEntry {
    pub fn new(
        name: &str,
        digest: [u8; 32],
        models: ModelGlobs,
        not_before: Option<SystemTime>,
        expires: Option<SystemTime>,
    ) -> Self {
        let name: Arc<str> = name.into();
        KeyEntry {
            metrics: KeyMetrics::new(name.clone()),
            name,
            digest,
            models,
            not_before,
            expires,
            limits: KeyLimits::default(),
            priority: 0,
            state: KeyState::new(),
        }
    }

    pub fn with_limits(mut self, limits: KeyLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }
}

/// Why a presented credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send it as \"Authorization: Bearer <key>\" or \"x-api-key: <key>\"")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("API key \"{0}\" has expired")]
    Expired(Arc<str>),
    #[error("API key \"{0}\" is not valid yet")]
    NotYetValid(Arc<str>),
}

impl AuthError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired(_) => "expired",
            AuthError::NotYetValid(_) => "not_yet_valid",
        }
    }
}

/// Cloning shares every entry (and its limit state) and the fast front.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
    verified: Arc<Verified>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SipHash-2-4 with its 128-bit output (the reference implementation's `siphash` with an
/// output length of 16; checked against its test vectors below).
mod siphash {
    /// The two 64-bit halves of the 128-bit key, little endian as in the reference.
    pub type Key = [u64; 2];

    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline(always)]
    fn compress(v: &mut [u64; 4], m: u64) {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    }

    /// The 128-bit tag of `msg` under `k`, as its two 64-bit halves (the reference's 16 output
    /// bytes are their little-endian bytes in this order).
    pub fn sip128(k: &Key, msg: &[u8]) -> [u64; 2] {
        let mut v = [
            k[0] ^ 0x736f_6d65_7073_6575,
            k[1] ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            k[0] ^ 0x6c79_6765_6e65_7261,
            k[1] ^ 0x7465_6462_7974_6573,
        ];
        let (blocks, tail) = msg.as_chunks::<8>();
        for b in blocks {
            compress(&mut v, u64::from_le_bytes(*b));
        }
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        // The length's low byte in the top byte of the last block (the reference's `b`).
        compress(&mut v, u64::from_le_bytes(last) | ((msg.len() as u64) << 56));
        v[2] ^= 0xee;
        for _ in 0..4 {
            round(&mut v);
        }
        let first = v[0] ^ v[1] ^ v[2] ^ v[3];
        v[1] ^= 0xdd;
        for _ in 0..4 {
            round(&mut v);
        }
        let second = v[0] ^ v[1] ^ v[2] ^ v[3];
        [first, second]
    }
}

/// The fast front of the table (the module comment says why it is safe): keys already found
/// through their digest, by a keyed tag of the key.
struct Verified {
    /// Drawn from the thread's CSPRNG (seeded by the OS) when the table is built.
    mac_key: siphash::Key,
    /// Indexed by the tag's first half; each slot keeps the whole tag to compare.
    by_tag: RwLock<HashMap<u64, Seen, BuildHasherDefault<TagHasher>>>,
}

struct Seen {
    tag: [u64; 2],
    entry: Arc<KeyEntry>,
}

impl Default for Verified {
    fn default() -> Self {
        Verified { mac_key: [rand::random(), rand::random()], by_tag: RwLock::default() }
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").field("keys", &self.len()).finish()
    }
}

impl Verified {
    /// The map index (the tag's first half) and the tag.
    fn tag(&self, presented: &[u8]) -> (u64, [u64; 2]) {
        let tag = siphash::sip128(&self.mac_key, presented);
        (tag[0], tag)
    }

    fn get(&self, index: u64, tag: &[u64; 2]) -> Option<Arc<KeyEntry>> {
        let by_tag = self.by_tag.read().unwrap_or_else(PoisonError::into_inner);
        let seen = by_tag.get(&index)?;
        // Both halves compared in constant time, combined without a branch.
        bool::from(seen.tag[0].ct_eq(&tag[0]) & seen.tag[1].ct_eq(&tag[1])).then(|| seen.entry.clone())
    }

    /// Remembers a key found through its digest; at most `cap` (the table's size) are kept.
    fn remember(&self, index: u64, tag: [u64; 2], entry: &Arc<KeyEntry>, cap: usize) {
        let mut by_tag = self.by_tag.write().unwrap_or_else(PoisonError::into_inner);
        if by_tag.len() < cap || by_tag.contains_key(&index) {
            by_tag.insert(index, Seen { tag, entry: entry.clone() });
        }
    }

    fn len(&self) -> usize {
        self.by_tag.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The tag's first half is already uniformly random (keyed), so the map uses it as it is
/// rather than hashing it again.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl KeyTable {
    /// Adds a key; returns false when the same key is already present under another entry.
    pub fn insert(&mut self, entry: KeyEntry) -> bool {
        self.forget_verified();
        let digest = entry.digest;
        self.by_digest.insert(digest, Arc::new(entry)).is_none()
    }

    /// Starts the fast front afresh (entries changed; it must not hand out a replaced one).
    fn forget_verified(&mut self) {
        if self.verified.len() > 0 {
            self.verified = Arc::default();
        }
    }

    /// Gives each key the counters of the key with the same name in `old`, so a reload (key
    /// rotation included) never resets a window or forgets requests in flight.
    pub fn carry_limit_state(&mut self, old: &KeyTable) {
        // The front holds entries too: emptied so that `Arc::get_mut` below sees them alone.
        self.forget_verified();
        let by_name: HashMap<&str, &Arc<KeyState>> = old.by_digest.values().map(|e| (&*e.name, &e.state)).collect();
        for entry in self.by_digest.values_mut() {
            let Some(state) = by_name.get(&*entry.name) else { continue };
            if let Some(e) = Arc::get_mut(entry) {
                e.state = Arc::clone(state);
            }
        }
    }

    /// Every key's SHA-256, for the log filter (src/observe/redact.rs).
    pub fn for_each_digest(&self, f: impl FnMut(&[u8; 32])) {
        self.by_digest.keys().for_each(f);
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Checks a presented key at `now`.
    pub fn check(&self, presented: &Secret, now: SystemTime) -> Result<Arc<KeyEntry>, AuthError> {
        self.check_with(presented.expose().as_bytes(), || now)
    }

    /// Checks a presented key; the clock is read only for a key with a validity window.
    pub fn check_with(&self, presented: &[u8], now: impl FnOnce() -> SystemTime) -> Result<Arc<KeyEntry>, AuthError> {
        let entry = self.find(presented).ok_or(AuthError::Invalid)?;
        if entry.not_before.is_some() || entry.expires.is_some() {
            let now = now();
            if entry.not_before.is_some_and(|t| now < t) {
                return Err(AuthError::NotYetValid(entry.name.clone()));
            }
            if entry.expires.is_some_and(|t| now >= t) {
                return Err(AuthError::Expired(entry.name.clone()));
            }
        }
        Ok(entry)
    }

    /// The entry of a presented key: from the fast front when the key passed before, else by
    /// its digest (the digest, not the key, picks the entry; the final comparison is constant
    /// time so the table's own equality check leaks nothing about the key either).
    fn find(&self, presented: &[u8]) -> Option<Arc<KeyEntry>> {
        let (index, tag) = self.verified.tag(presented);
        if let Some(entry) = self.verified.get(index, &tag) {
            return Some(entry);
        }
        let digest = sha256(presented);
        let entry = self.by_digest.get(&digest)?;
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return None;
        }
        self.verified.remember(index, tag, entry, self.by_digest.len());
        Some(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lookup_and_validity() {
        let now = SystemTime::now();
        let mut t = KeyTable::default();
        t.insert(KeyEntry::new("a", sha256(b"k-a"), ModelGlobs(vec!["llama-*".into()]), None, None));
        t.insert(KeyEntry::new(
            "old",
            sha256(b"k-old"),
            ModelGlobs::default(),
            None,
            Some(now - Duration::from_secs(1)),
        ));
        t.insert(KeyEntry::new(
            "new",
            sha256(b"k-new"),
            ModelGlobs::default(),
            Some(now + Duration::from_secs(60)),
            None,
        ));
        let a = t.check(&Secret::new("k-a"), now).unwrap();
        assert_eq!(&*a.name, "a");
        assert!(a.models.allows("llama-3"));
        assert!(!a.models.allows("gpt-4"));
        assert_eq!(t.check(&Secret::new("nope"), now).unwrap_err(), AuthError::Invalid);
        assert_eq!(t.check(&Secret::new("k-old"), now).unwrap_err(), AuthError::Expired("old".into()));
        assert_eq!(t.check(&Secret::new("k-new"), now).unwrap_err(), AuthError::NotYetValid("new".into()));
    }

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&hex::decode(s).unwrap());
        out
    }

    #[test]
    fn siphash_128_matches_the_reference_vectors() {
        // vectors_sip128 of the reference implementation: key 00..0f, message 00..(n-1).
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let msg: Vec<u8> = (0..64).collect();
        for (n, want) in [
            (0, "a3817f04ba25a8e66df67214c7550293"),
            (1, "da87c1d86b99af44347659119b22fc45"),
            (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
            (8, "3b62a9ba6258f5610f83e264f31497b4"),
            (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
            (16, "6ee2a4ca67b054bbfd3315bf85230577"),
            (63, "5150d1772f50834a503e069a973fbd7c"),
        ] {
            let [first, second] = siphash::sip128(&key, &msg[..n]);
            let mut got = [0u8; 16];
            got[..8].copy_from_slice(&first.to_le_bytes());
            got[8..].copy_from_slice(&second.to_le_bytes());
            assert_eq!(got, hex16(want), "{n} bytes");
        }
    }

    fn table(keys: &[&str]) -> KeyTable {
        let mut t = KeyTable::default();
        for k in keys {
            t.insert(KeyEntry::new(k, sha256(k.as_bytes()), ModelGlobs::default(), None, None));
        }
        t
    }

    #[test]
    fn fast_front_answers_as_the_digest_table_does() {
        let now = SystemTime::now();
        let t = table(&["sk-alpha-0123456789", "sk-beta-0123456789", "x"]);
        for _ in 0..3 {
            assert_eq!(&*t.check(&Secret::new("sk-alpha-0123456789"), now).unwrap().name, "sk-alpha-0123456789");
            assert_eq!(&*t.check(&Secret::new("x"), now).unwrap().name, "x");
        }
        assert_eq!(t.verified.len(), 2);
        // Near misses of a remembered key: prefix, extension, one byte changed, case, spaces,
        // empty, non-UTF-8, huge.
        let huge = "sk-alpha-0123456789".repeat(100_000);
        for bad in [
            &b"sk-alpha-012345678"[..],
            b"sk-alpha-01234567890",
            b"sk-alpha-0123456788",
            b"SK-alpha-0123456789",
            b" sk-alpha-0123456789",
            b"sk-alpha-0123456789 ",
            b"",
            b"\xffsk-alpha-0123456789",
            b"sk-alpha-0123456789\0",
            huge.as_bytes(),
        ] {
            assert_eq!(t.check_with(bad, || now).unwrap_err(), AuthError::Invalid, "{:?}", &bad[..bad.len().min(30)]);
        }
        assert_eq!(t.verified.len(), 2);
        // The clone shares the front.
        let c = t.clone();
        assert!(Arc::ptr_eq(&c.check_with(b"x", || now).unwrap(), &t.check_with(b"x", || now).unwrap()));
    }

    #[test]
    fn sprayed_keys_leave_nothing_behind() {
        let t = table(&["sk-real"]);
        for i in 0..10_000u32 {
            let k = format!("sk-{i:08x}-{}", i.wrapping_mul(2_654_435_761));
            assert!(t.check_with(k.as_bytes(), SystemTime::now).is_err());
        }
        assert_eq!(t.verified.len(), 0);
        t.check_with(b"sk-real", SystemTime::now).unwrap();
        t.check_with(b"sk-real", SystemTime::now).unwrap();
        assert_eq!(t.verified.len(), 1);
    }

    #[test]
    fn a_remembered_key_is_still_checked_for_its_window() {
        let now = SystemTime::now();
        let mut t = KeyTable::default();
        t.insert(KeyEntry::new(
            "w",
            sha256(b"k-w"),
            ModelGlobs::default(),
            Some(now),
            Some(now + Duration::from_secs(60)),
        ));
        assert_eq!(
            t.check_with(b"k-w", || now - Duration::from_secs(1)).unwrap_err(),
            AuthError::NotYetValid("w".into())
        );
        assert_eq!(t.verified.len(), 1);
        assert!(t.check_with(b"k-w", || now).is_ok());
        assert_eq!(t.check_with(b"k-w", || now + Duration::from_secs(60)).unwrap_err(), AuthError::Expired("w".into()));
        // A key without a window never reads the clock.
        let t = table(&["k"]);
        for _ in 0..2 {
            assert!(t.check_with(b"k", || unreachable!("no window, no clock")).is_ok());
        }
    }

    #[test]
    fn a_tag_index_collision_falls_back_to_the_digest() {
        let t = table(&["k1", "k2"]);
        let (index, _) = t.verified.tag(b"k2");
        let (_, tag1) = t.verified.tag(b"k1");
        // k1's entry filed under k2's index (as a 64-bit collision would): k2 must neither get
        // k1's entry nor be refused.
        let k1 = t.check_with(b"k1", SystemTime::now).unwrap();
        t.verified.remember(index, tag1, &k1, 2);
        assert!(t.verified.get(index, &t.verified.tag(b"k2").1).is_none());
        assert_eq!(&*t.check_with(b"k2", SystemTime::now).unwrap().name, "k2");
        assert_eq!(&*t.check_with(b"k1", SystemTime::now).unwrap().name, "k1");
    }

    #[test]
    fn reload_after_traffic_still_carries_the_state() {
        let old = table(&["k"]);
        let mut new = table(&["k"]);
        new.check_with(b"k", SystemTime::now).unwrap();
        assert_eq!(new.verified.len(), 1);
        new.carry_limit_state(&old);
        let (a, b) = (old.check_with(b"k", SystemTime::now).unwrap(), new.check_with(b"k", SystemTime::now).unwrap());
        assert!(Arc::ptr_eq(&a.state, &b.state));
        // A key inserted after traffic empties the front (it must not hand out a replaced entry).
        new.insert(KeyEntry::new("k", sha256(b"k"), ModelGlobs::default(), None, None));
        assert_eq!(new.verified.len(), 0);
    }
}
