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

mod fast;
pub mod multipart;

pub use multipart::{close_offset, multipart_boundary, multipart_model};

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

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
    /// Where in the body the rewrite splices (`crate::proxy::rewrite` reads it).
    pub spans: Spans,
    /// The raw `content` of the first system and first user message, for [`Scan::prefix`].
    pub prefix_parts: Option<(Option<Range<usize>>, Range<usize>)>,
    /// The raw value of `messages` (else `prompt`): the prompt text the inference balancer
    /// cuts into blocks (`fleet/inference/prefix_index.rs`).
    pub prompt: Option<Range<usize>>,
    /// `max_completion_tokens`, else `max_tokens`, when a non-negative integer.
    pub max_tokens: Option<u64>,
}

/// Byte offsets into the scanned body of what a splice needs (values, not keys: a key may be
/// spelt with escapes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    /// Just after the top-level `{`.
    pub open: usize,
    /// The top-level object has at least one member.
    pub has_members: bool,
    /// The value of `model` (also when it is `null` or `""`).
    pub model: Option<Range<usize>>,
    /// The value of `stream_options`.
    pub stream_options: Option<Range<usize>>,
    /// The value of `stream_options.include_usage`.
    pub include_usage: Option<Range<usize>>,
}

impl Scan {
    /// A 128-bit fingerprint of the model and the first system and user messages (`None`
    /// without a user message): stays the same while a conversation grows. `body` is the
    /// scanned body; the hash is computed here, on demand, only for providers whose
    /// `hash_key` reaches `prefix`. It is only a ring key (`crate::fleet::hash_key`), never
    /// a secret nor stored: XXH3-128 with a fixed seed, so every gateway process (and every
    /// build) places a prompt on the same replica.
    pub fn prefix(&self, body: &[u8]) -> Option<[u8; 16]> {
        use xxhash_rust::xxh3::xxh3_128_with_seed as xxh3;
        let (system, user) = self.prefix_parts.as_ref()?;
        let user = body.get(user.clone())?;
        let system = system.clone().and_then(|r| body.get(r)).unwrap_or(b"");
        // Each part hashed on its own (its length is in its hash), then the three hashes:
        // one-shot hashes of short inputs need no per-seed secret, unlike a streaming state.
        let mut parts = [0u8; 48];
        for (slot, part) in
            parts.chunks_exact_mut(16).zip([self.model.as_deref().unwrap_or("").as_bytes(), system, user])
        {
            slot.copy_from_slice(&xxh3(part, PREFIX_SEED).to_le_bytes());
        }
        Some(xxh3(&parts, PREFIX_SEED).to_le_bytes())
    }
}

/// The seed of [`Scan::prefix`]: fixed, so fingerprints agree across processes.
const PREFIX_SEED: u64 = 0x6d63_6173_7072_6678;

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
    scan_with(body, true)
}

/// [`scan`]; `fast`: try the one-pass reader first (tests compare both ways).
fn scan_with(body: &[u8], fast: bool) -> Result<Scan, ScanError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Scan::default());
    }
    let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace()).filter(|&i| body[i] == b'{') else {
        return Err(ScanError::NotJson);
    };
    let text = std::str::from_utf8(body).map_err(|_| ScanError::InvalidUtf8)?;
    // The common body is read in one pass without serde ([`fast`]); anything that reader is
    // not certain of (an error, an escaped key, an odd shape) is read by serde below, which
    // also words the refusal.
    if fast {
        if let Some(scan) = fast::scan(text, open) {
            return Ok(scan);
        }
    }
    check_shape(body)?;
    let top = serde_json::from_str::<Top>(text).map_err(|e| ScanError::Invalid(e.to_string()))?;
    if let Some(e) = top.refused {
        return Err(e);
    }
    let at = |raw: &RawValue| span(text, raw);
    let model = top.model.filter(|m| !m.is_empty());
    let prefix_parts = top.messages.user.map(|u| (top.messages.system.map(at), at(u)));
    let spans = Spans {
        open: open + 1,
        has_members: top.members > 0,
        model: top.model_raw.map(at),
        stream_options: top.stream_options.map(|(o, _)| at(o)),
        include_usage: top.stream_options.and_then(|(_, u)| u).map(at),
    };
    Ok(Scan {
        model,
        stream: top.stream,
        include_usage: top.include_usage,
        user: top.user.map(user_text),
        spans,
        prefix_parts,
        prompt: top.prompt.map(at),
        max_tokens: top.max_completion_tokens.or(top.max_tokens),
    })
}

/// Where a raw value borrowed from `text` sits in it.
fn span(text: &str, raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    start..start + raw.get().len()
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

/// The top-level object, read key by key so spellings and repeats can be refused. Values
/// the gateway may splice into are kept as raw slices of the body (no tree is built and
/// nothing is copied but the model name).
#[derive(Default)]
struct Top<'a> {
    model: Option<String>,
    model_raw: Option<&'a RawValue>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    /// `stream_options` and its `include_usage` value.
    stream_options: Option<(&'a RawValue, Option<&'a RawValue>)>,
    user: Option<&'a RawValue>,
    messages: FirstMessages<'a>,
    /// The raw `messages` or `prompt` value, and the token limits.
    prompt: Option<&'a RawValue>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    members: usize,
    /// A reason to refuse found while reading (kept apart from serde's error text).
    refused: Option<ScanError>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor(std::marker::PhantomData))
    }
}

struct TopVisitor<'a>(std::marker::PhantomData<&'a ()>);

/// `stream_options`; a repeated `include_usage` is refused by serde ("duplicate field").
#[derive(Deserialize)]
struct StreamOptions<'a> {
    /// Also `null` (which the splice must replace, not add beside).
    #[serde(borrow, default, deserialize_with = "raw_even_null")]
    include_usage: Option<&'a RawValue>,
}

fn raw_even_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// A key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The keys seen so far, compared ignoring ASCII case: a short list for the usual few keys,
/// a set once there are many (so a body with thousands of keys is not quadratic).
#[derive(Default)]
struct SeenKeys<'a> {
    few: Vec<Cow<'a, str>>,
    many: HashSet<String>,
}

impl<'a> SeenKeys<'a> {
    const FEW: usize = 32;

    /// Records `key`; false when it was seen before.
    fn insert(&mut self, key: Cow<'a, str>) -> bool {
        if self.few.len() < Self::FEW {
            if self.few.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
                return false;
            }
            self.few.push(key);
            return true;
        }
        if self.few.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
            return false;
        }
        self.many.insert(key.to_ascii_lowercase())
    }
}

impl<'de: 'a, 'a> Visitor<'de> for TopVisitor<'a> {
    type Value = Top<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'a>, A::Error> {
        let mut top = Top::default();
        let mut seen = SeenKeys::default();
        while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
            top.members += 1;
            if !seen.insert(key.clone()) {
                top.refused.get_or_insert(ScanError::DuplicateKey(bounded(&key)));
            }
            if key.eq_ignore_ascii_case("model") && key != "model" {
                top.refused.get_or_insert(ScanError::ModelSpelling(bounded(&key)));
            }
            match &*key {
                "model" => {
                    let raw = map.next_value::<&'a RawValue>()?;
                    top.model = serde_json::from_str::<Option<String>>(raw.get()).map_err(nested)?;
                    top.model_raw = Some(raw);
                }
                "stream" => top.stream = map.next_value::<Option<bool>>()?,
                "stream_options" => {
                    let raw = map.next_value::<&'a RawValue>()?;
                    let opts = serde_json::from_str::<Option<StreamOptions<'a>>>(raw.get()).map_err(nested)?;
                    let usage_raw = opts.and_then(|o| o.include_usage);
                    top.include_usage = match usage_raw {
                        Some(u) => serde_json::from_str::<Option<bool>>(u.get()).map_err(nested)?,
                        None => None,
                    };
                    top.stream_options = Some((raw, usage_raw));
                }
                "user" => top.user = map.next_value::<Option<&'a RawValue>>()?,
                "messages" => {
                    let raw = map.next_value::<&'a RawValue>()?;
                    top.messages = serde_json::from_str::<FirstMessages<'a>>(raw.get()).map_err(nested)?;
                    top.prompt = Some(raw);
                }
                "prompt" => {
                    let raw = map.next_value::<&'a RawValue>()?;
                    top.prompt = top.prompt.or(Some(raw));
                }
                // Read leniently: a value the upstream refuses is its business, not routing's.
                "max_tokens" => top.max_tokens = serde_json::from_str(map.next_value::<&'a RawValue>()?.get()).ok(),
                "max_completion_tokens" => {
                    top.max_completion_tokens = serde_json::from_str(map.next_value::<&'a RawValue>()?.get()).ok()
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// An error of a value parsed on its own, for the outer parser (which adds the position).
fn nested<E: serde::de::Error>(e: serde_json::Error) -> E {
    let text = e.to_string();
    E::custom(text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m))
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
struct FirstMessages<'a> {
    system: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for FirstMessages<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FirstMessages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_unit<E>(self) -> Result<FirstMessages<'a>, E> {
                Ok(FirstMessages::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstMessages<'a>, A::Error> {
                #[derive(Deserialize)]
                struct Msg<'a> {
                    #[serde(borrow)]
                    role: Option<Cow<'a, str>>,
                    #[serde(borrow)]
                    content: Option<&'a RawValue>,
                }
                let mut out = FirstMessages::default();
                while out.system.is_none() || out.user.is_none() {
                    let Some(m) = seq.next_element::<Msg<'a>>()? else { return Ok(out) };
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
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
