//! A walk over the top level of a JSON answer that finds the raw `usage` value without
//! parsing the rest (the answer's text, its choices) into anything. It gives an answer only
//! when that answer is certain to be serde_json's on the whole document: one `usage` key, no
//! `response` key (the Responses API shape, read by the full parse), no key spelt with an
//! escape, balanced brackets and closed strings. Anything else is [`Walk::Unsure`] and goes to
//! the full parse. Numbers and literals in the skipped parts are not checked: an answer that
//! is malformed only there still has its `usage` read. The tokenizer is the gateway's one
//! ([`crate::json_scan`], its lenient functions).

use crate::json_scan::{skip_nested, string_end, ws};
use std::ops::Range;

pub enum Walk {
    /// The raw value of the one top-level `usage` key, if any.
    Found(Option<Range<usize>>),
    Unsure,
}

pub fn top_level_usage(json: &[u8]) -> Walk {
    walk(json).map_or(Walk::Unsure, Walk::Found)
}

fn walk(json: &[u8]) -> Option<Option<Range<usize>>> {
    let open = ws(json, 0);
    let mut usage = None;
    let end = members(json, open, |key, value| {
        match key {
            b"usage" if usage.is_some() => return None,
            b"usage" => usage = Some(value),
            b"response" => return None,
            _ => {}
        }
        Some(())
    })?;
    (ws(json, end) == json.len()).then_some(usage)
}

/// Walks the object that opens at `open`, calling `member` with each key (without quotes) and
/// the span of its value; the index just past the closing brace. `None` when it is not an
/// object, a key has an escape, or `member` says so.
fn members(json: &[u8], open: usize, mut member: impl FnMut(&[u8], Range<usize>) -> Option<()>) -> Option<usize> {
    if *json.get(open)? != b'{' {
        return None;
    }
    let mut i = ws(json, open + 1);
    if *json.get(i)? == b'}' {
        return Some(i + 1);
    }
    loop {
        if *json.get(i)? != b'"' {
            return None;
        }
        let (end, escaped) = string_end(json, i)?;
        if escaped {
            return None;
        }
        let key = json.get(i + 1..end)?;
        i = ws(json, end + 1);
        if *json.get(i)? != b':' {
            return None;
        }
        let start = ws(json, i + 1);
        i = skip_value(json, start)?;
        member(key, start..i)?;
        i = ws(json, i);
        match *json.get(i)? {
            b',' => i = ws(json, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index just past the value that starts at `i`.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match *json.get(i)? {
        b'"' => Some(string_end(json, i)?.0 + 1),
        b'{' | b'[' => skip_nested(json, i),
        _ => {
            let n = json
                .get(i..)?
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .count();
            (n > 0).then_some(i + n)
        }
    }
}

/// Whether a streamed chunk is the usage chunk that `stream_options.include_usage` adds: its
/// `choices` an empty array and its `usage` present and not `null` (what serde_json reads into
/// `choices: Option<Vec<_>>` and `usage: Option<_>`). `None` when unsure (not an object, a key
/// with an escape or given twice): the caller then asks serde_json. As for [`top_level_usage`],
/// numbers and literals in the skipped members are not checked.
pub fn is_usage_chunk(json: &[u8]) -> Option<bool> {
    let (mut choices, mut usage) = (None, None);
    let end = members(json, ws(json, 0), |key, value| {
        let slot = match key {
            b"choices" => &mut choices,
            b"usage" => &mut usage,
            _ => return Some(()),
        };
        slot.replace(value).is_none().then_some(())
    })?;
    if ws(json, end) != json.len() {
        return None;
    }
    let empty = choices.and_then(|r| json.get(r)).is_some_and(|v| v.first() == Some(&b'[') && ws(v, 1) + 1 == v.len());
    let usage = usage.and_then(|r| json.get(r)).is_some_and(|v| v != b"null");
    Some(empty && usage)
}

/// The counts of a `usage` object, by the names [`FIELDS`] lists: `None` where absent or null.
pub type Counts = [Option<u64>; 5];

/// The names of the counts, in [`Counts`]' order.
pub const FIELDS: [&[u8]; 5] =
    [b"prompt_tokens", b"completion_tokens", b"input_tokens", b"output_tokens", b"total_tokens"];

/// Reads a `usage` value (the span [`top_level_usage`] found) as serde_json reads it into
/// optional integer fields: `Some(None)` for `null`, the counts of an object whose counts are
/// plain non-negative integers or `null` and whose other members are skipped. Anything else
/// (escapes in names, a count given twice, signs, fractions, exponents, another shape) is
/// `None`, for serde_json to decide.
pub fn usage_counts(v: &[u8]) -> Option<Option<Counts>> {
    if v == b"null" {
        return Some(None);
    }
    let mut counts: Counts = [None; 5];
    let mut seen = [false; 5];
    let end = members(v, 0, |key, value| {
        if let Some(f) = FIELDS.iter().position(|name| *name == key) {
            if std::mem::replace(&mut seen[f], true) {
                return None;
            }
            counts[f] = count(v.get(value)?)?;
        }
        Some(())
    })?;
    (end == v.len()).then_some(Some(counts))
}

/// `null`, or a JSON integer without sign, fraction or exponent that fits a u64.
fn count(raw: &[u8]) -> Option<Option<u64>> {
    if raw == b"null" {
        return Some(None);
    }
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) || (raw.len() > 1 && raw[0] == b'0') {
        return None;
    }
    let mut n: u64 = 0;
    for d in raw {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(Some(n))
}
