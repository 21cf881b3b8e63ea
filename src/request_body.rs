//! The body scanner: what the gateway needs from an OpenAI request body (`model`, `stream`,
//! `stream_options.include_usage`, `user`, a prompt-prefix fingerprint), read so that the
//! model it checks is the model the upstream will use, or refused when that is in doubt:
//! - the body must be UTF-8 JSON whose top level is an object (upstreams parse it whatever
//!   the `Content-Type` says, so the gateway does too);
//! - a key spelt `model` in another case (`Model`: Go's `encoding/json` matches it, Python
//!   does not) and any top-level key given twice (upstreams differ in first- or last-wins)
//!   are refused;
//! - nesting deeper than [`MAX_DEPTH`] and numbers longer than [`MAX_NUMBER_LEN`] characters
//!   are refused before parsing (serde_json skips unknown values without a depth limit);
//! - `"model": null` and `"model": ""` count as no model (vLLM then uses its default).
//!
//! Multipart forms (`/v1/audio/transcriptions`) are read by [`multipart`].

pub mod multipart;

pub use multipart::{close_offset, multipart_boundary, multipart_model};

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::fmt;

/// Deepest nesting of arrays and objects accepted (serde_json's own limit for typed values).
pub const MAX_DEPTH: usize = 128;
/// Longest number accepted, in characters (Python refuses integers over 4,300 digits).
pub const MAX_NUMBER_LEN: usize = 256;

/// What the gateway learned from a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// `None` when absent, `null` or empty.
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    /// OpenAI's end-user id: a JSON string's value, else the raw JSON.
    pub user: Option<String>,
    /// SHA-256 of the model and the first system and user messages (`None` without a user
    /// message): stays the same while a conversation grows.
    pub prefix: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The body does not start with `{` (after white space): not a JSON object at all.
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    #[error("the body nests arrays or objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body has a number longer than {MAX_NUMBER_LEN} characters")]
    NumberTooLong,
    #[error("the body names \"model\" as {0:?}: only the exact, lower-case key is accepted")]
    ModelSpelling(String),
    #[error("the body gives the key {0:?} more than once")]
    DuplicateKey(String),
    #[error("{0}")]
    Invalid(String),
    #[error("multipart form: {0}")]
    Multipart(String),
}

/// Scans a JSON request body. Never panics, for any input.
pub fn scan(body: &[u8]) -> Result<Scan, ScanError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Scan::default());
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ScanError::NotJson);
    }
    let text = std::str::from_utf8(body).map_err(|_| ScanError::InvalidUtf8)?;
    check_shape(body)?;
    let top = serde_json::from_str::<Top>(text).map_err(|e| ScanError::Invalid(e.to_string()))?;
    if let Some(e) = top.refused {
        return Err(e);
    }
    let model = top.model.filter(|m| !m.is_empty());
    let prefix = top.messages.fingerprint(model.as_deref());
    Ok(Scan { model, stream: top.stream, include_usage: top.include_usage, user: top.user, prefix })
}

/// One pass over the bytes, outside strings: nesting depth and number lengths.
fn check_shape(b: &[u8]) -> Result<(), ScanError> {
    let (mut depth, mut i, mut number) = (0usize, 0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            number = 0;
            i += 1;
            // To the closing quote, skipping escaped characters.
            loop {
                let Some(at) = memchr::memchr2(b'"', b'\\', &b[i.min(b.len())..]) else { return Ok(()) };
                i += at;
                if b[i] == b'\\' {
                    i += 2;
                } else {
                    i += 1;
                    break;
                }
            }
            continue;
        }
        match c {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
            number += 1;
            if number > MAX_NUMBER_LEN {
                return Err(ScanError::NumberTooLong);
            }
        } else {
            number = 0;
        }
        i += 1;
    }
    Ok(())
}

/// The top-level object, read key by key so spellings and repeats can be refused.
#[derive(Default)]
struct Top {
    model: Option<String>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    user: Option<String>,
    messages: FirstMessages,
    /// A reason to refuse found while reading (kept apart from serde's error text).
    refused: Option<ScanError>,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = Top::default();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.to_ascii_lowercase()) {
                top.refused.get_or_insert(ScanError::DuplicateKey(bounded(&key)));
            }
            if key.eq_ignore_ascii_case("model") && key != "model" {
                top.refused.get_or_insert(ScanError::ModelSpelling(bounded(&key)));
            }
            match key.as_str() {
                "model" => top.model = map.next_value::<Option<String>>()?,
                "stream" => top.stream = map.next_value::<Option<bool>>()?,
                "stream_options" => {
                    top.include_usage = map.next_value::<Option<StreamOptions>>()?.and_then(|o| o.include_usage)
                }
                "user" => top.user = map.next_value::<Option<Box<RawValue>>>()?.map(|r| user_text(&r)),
                "messages" => top.messages = map.next_value::<FirstMessages>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// A key as quoted in an error: printable and short.
fn bounded(key: &str) -> String {
    key.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn user_text(raw: &RawValue) -> String {
    let text = raw.get();
    match serde_json::from_str::<String>(text) {
        Ok(s) => s,
        Err(_) => text.to_string(),
    }
}

/// The raw `content` of the first system and the first user message, for the prefix
/// fingerprint: in a multi-turn chat they stay the same while the history grows.
#[derive(Default)]
struct FirstMessages {
    system: Option<Box<RawValue>>,
    user: Option<Box<RawValue>>,
}

impl FirstMessages {
    fn fingerprint(&self, model: Option<&str>) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let user = self.user.as_ref()?;
        let mut h = Sha256::new();
        h.update(model.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(self.system.as_ref().map(|s| s.get()).unwrap_or("").as_bytes());
        h.update([0]);
        h.update(user.get().as_bytes());
        Some(h.finalize().into())
    }
}

impl<'de> Deserialize<'de> for FirstMessages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstMessages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_unit<E>(self) -> Result<FirstMessages, E> {
                Ok(FirstMessages::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstMessages, A::Error> {
                #[derive(Deserialize)]
                struct Msg {
                    role: Option<String>,
                    content: Option<Box<RawValue>>,
                }
                let mut out = FirstMessages::default();
                while out.system.is_none() || out.user.is_none() {
                    let Some(m) = seq.next_element::<Msg>()? else { return Ok(out) };
                    let slot = match m.role.as_deref() {
                        Some("system" | "developer") => &mut out.system,
                        Some("user") => &mut out.user,
                        _ => continue,
                    };
                    if slot.is_none() {
                        *slot = m.content;
                    }
                }
                // Both found: skip the rest of the history without keeping it.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
