//! The body scan in one pass over the bytes with the strict tokenizer
//! ([`crate::json_scan`]), no serde. It answers only when it is certain its [`Scan`] is the
//! one the serde reader in [`super::scan`] gives, that is when the whole body is valid JSON
//! within the limits and reads without refusal. Anything else (invalid JSON, a refusal, a
//! key spelt with an escape, more than [`MAX_KEYS`] top-level keys, a message or
//! `stream_options` that is not an object) is `None`, and the serde reader decides and words
//! the error.

use super::{Scan, MAX_DEPTH, MAX_NUMBER_LEN};
use crate::json_scan::{self, literal, ws, Limits};
use std::ops::Range;

const LIMITS: Limits = Limits { depth: MAX_DEPTH, number_len: MAX_NUMBER_LEN };

/// Top-level keys compared for repeats here; a body with more goes to the serde reader.
const MAX_KEYS: usize = 32;

/// `text` is the whole body; its top-level `{` is at `open`.
pub fn scan(text: &str, open: usize) -> Option<Scan> {
    let b = text.as_bytes();
    // Only JSON's white space before the object (not a form feed, say).
    if ws(b, 0) != open {
        return None;
    }
    let mut s = Scan::default();
    s.spans.open = open + 1;
    let mut seen: [&[u8]; MAX_KEYS] = [&[]; MAX_KEYS];
    let mut members = 0;
    let (mut max_tokens, mut max_completion_tokens) = (None, None);
    let mut i = ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key_end, escaped) = json_scan::string(b, i)?;
            if escaped {
                return None;
            }
            let key = b.get(i + 1..key_end)?;
            if members == MAX_KEYS || seen[..members].iter().any(|k| k.eq_ignore_ascii_case(key)) {
                return None;
            }
            if key != b"model" && key.eq_ignore_ascii_case(b"model") {
                return None;
            }
            seen[members] = key;
            members += 1;
            i = ws(b, key_end + 1);
            if *b.get(i)? != b':' {
                return None;
            }
            let start = ws(b, i + 1);
            i = match key {
                b"messages" => {
                    let (end, system, user) = messages(b, start)?;
                    s.prefix_parts = user.map(|u| (system, u));
                    s.prompt = Some(start..end);
                    end
                }
                b"stream_options" => {
                    let (end, usage) = stream_options(b, start)?;
                    s.include_usage = match usage.as_ref().map(|u| &b[u.clone()]) {
                        None | Some(b"null") => None,
                        Some(b"true") => Some(true),
                        Some(b"false") => Some(false),
                        Some(_) => return None,
                    };
                    s.spans.stream_options = Some(start..end);
                    s.spans.include_usage = usage;
                    end
                }
                _ => {
                    let end = json_scan::value(b, start, 1, LIMITS)?;
                    let raw = &b[start..end];
                    match key {
                        b"model" => {
                            s.model = match raw[0] {
                                b'n' => None,
                                b'"' => Some(string_value(text, start..end)?),
                                _ => return None,
                            };
                            s.spans.model = Some(start..end);
                        }
                        b"stream" => {
                            s.stream = match raw {
                                b"null" => None,
                                b"true" => Some(true),
                                b"false" => Some(false),
                                _ => return None,
                            }
                        }
                        b"user" if raw != b"null" => {
                            s.user = Some(match raw[0] {
                                b'"' => string_value(text, start..end)?,
                                _ => text.get(start..end)?.to_string(),
                            })
                        }
                        b"prompt" => s.prompt = s.prompt.take().or(Some(start..end)),
                        b"max_tokens" => max_tokens = count(raw),
                        b"max_completion_tokens" => max_completion_tokens = count(raw),
                        _ => {}
                    }
                    end
                }
            };
            i = ws(b, i);
            match *b.get(i)? {
                b',' => i = ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if ws(b, i) != b.len() {
        return None;
    }
    s.model = s.model.filter(|m| !m.is_empty());
    s.spans.has_members = members > 0;
    s.max_tokens = max_completion_tokens.or(max_tokens);
    Some(s)
}

/// The value of the JSON string at `span` (validated): borrowed from the body when it has no
/// escapes, else decoded by serde_json (rare: the decoding is then exactly its own).
fn string_value(text: &str, span: Range<usize>) -> Option<String> {
    let raw = text.get(span)?;
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if inner.contains('\\') {
        return serde_json::from_str::<String>(raw).ok();
    }
    Some(inner.to_string())
}

/// A token limit as serde_json reads a `u64` from it: a plain integer that fits, else none.
fn count(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for d in raw {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// The members of the object that opens at `open` (depth `depth` inside the body, counting
/// it): calls `member` with each key (which may not hold escapes) and the start of its value,
/// `member` returning the end of the value. The index past the closing brace.
fn object(b: &[u8], open: usize, mut member: impl FnMut(&[u8], usize) -> Option<usize>) -> Option<usize> {
    if *b.get(open)? != b'{' {
        return None;
    }
    let mut i = ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        let (key_end, escaped) = json_scan::string(b, i)?;
        if escaped {
            return None;
        }
        let key = b.get(i + 1..key_end)?;
        i = ws(b, key_end + 1);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, member(key, ws(b, i + 1))?);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// `stream_options` (`null` or an object, at depth 1) as serde reads it into
/// `Option<StreamOptions>`: its end and the span of `include_usage`, given at most once.
fn stream_options(b: &[u8], start: usize) -> Option<(usize, Option<Range<usize>>)> {
    if b.get(start) == Some(&b'n') {
        return Some((literal(b, start, b"null")?, None));
    }
    let mut usage = None;
    let end = object(b, start, |key, at| {
        let end = json_scan::value(b, at, 2, LIMITS)?;
        if key == b"include_usage" && usage.replace(at..end).is_some() {
            return None;
        }
        Some(end)
    })?;
    Some((end, usage))
}

/// `messages` (`null` or an array, at depth 1) as serde reads it into `FirstMessages`: its
/// end and the `content` spans of the first system (or developer) and the first user
/// message that has one. Until both are found every message must be an object whose `role`
/// is a string without escapes or `null`, and whose `role` and `content` come at most once.
type Messages = (usize, Option<Range<usize>>, Option<Range<usize>>);

fn messages(b: &[u8], start: usize) -> Option<Messages> {
    match *b.get(start)? {
        b'n' => return Some((literal(b, start, b"null")?, None, None)),
        b'[' => {}
        _ => return None,
    }
    let (mut system, mut user) = (None, None);
    let mut i = ws(b, start + 1);
    if b.get(i) == Some(&b']') {
        return Some((i + 1, None, None));
    }
    loop {
        if system.is_some() && user.is_some() {
            i = json_scan::value(b, i, 2, LIMITS)?;
        } else {
            let (mut role, mut content) = (None, None);
            i = object(b, i, |key, at| {
                let end = json_scan::value(b, at, 3, LIMITS)?;
                let raw = &b[at..end];
                match key {
                    b"role" => {
                        let r = match raw {
                            b"null" => None,
                            [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => Some(inner),
                            _ => return None,
                        };
                        if role.replace(r).is_some() {
                            return None;
                        }
                    }
                    b"content" => {
                        let again = content.replace((raw != b"null").then_some(at..end)).is_some();
                        if again {
                            return None;
                        }
                    }
                    _ => {}
                }
                Some(end)
            })?;
            let slot = match role.flatten() {
                Some(b"system" | b"developer") => Some(&mut system),
                Some(b"user") => Some(&mut user),
                _ => None,
            };
            if let Some(slot) = slot.filter(|s| s.is_none()) {
                *slot = content.flatten();
            }
        }
        i = ws(b, i);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b']' => return Some((i + 1, system, user)),
            _ => return None,
        }
    }
}
