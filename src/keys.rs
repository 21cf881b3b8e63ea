//! The key table: client keys stored as SHA-256 digests, looked up by digest (no scan of the
//! key list), confirmed with a constant-time comparison. Keys are never kept in clear.

use crate::limits::{KeyLimits, KeyState};
use crate::observe::bound::KeyMetrics;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
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

/// Cloning shares every entry (and its limit state).
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl KeyTable {
    /// Adds a key; returns false when the same key is already present under another entry.
    pub fn insert(&mut self, entry: KeyEntry) -> bool {
        let digest = entry.digest;
        self.by_digest.insert(digest, Arc::new(entry)).is_none()
    }

    /// Gives each key the counters of the key with the same name in `old`, so a reload (key
    /// rotation included) never resets a window or forgets requests in flight.
    pub fn carry_limit_state(&mut self, old: &KeyTable) {
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

    /// Checks a presented key. The digest, not the key, picks the entry; the final comparison
    /// is constant time so the table's own equality check leaks nothing about the key either.
    pub fn check(&self, presented: &Secret, now: SystemTime) -> Result<Arc<KeyEntry>, AuthError> {
        let digest = sha256(presented.expose().as_bytes());
        let entry = self.by_digest.get(&digest).ok_or(AuthError::Invalid)?;
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return Err(AuthError::Invalid);
        }
        if entry.not_before.is_some_and(|t| now < t) {
            return Err(AuthError::NotYetValid(entry.name.clone()));
        }
        if entry.expires.is_some_and(|t| now >= t) {
            return Err(AuthError::Expired(entry.name.clone()));
        }
        Ok(entry.clone())
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
}
