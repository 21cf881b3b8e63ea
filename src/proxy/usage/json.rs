//! A walk over the top level of a JSON answer that finds the raw `usage` value without
//! parsing the rest (the answer's text, its choices) into anything. It gives an answer only
//! when that answer is certain to be serde_json's on the whole document: one `usage` key, no
//! `response` key (the Responses API shape, read by the full parse), no key spelt with an
//! escape, balanced brackets and closed strings. Anything else is [`Walk::Unsure`] and goes to
//! the full parse. Numbers and literals in the skipped parts are not checked: an answer that
//! is malformed only there still has its `usage` read. The tokenizer is the gateway's one
//! ([`crate::json_scan`], its lenient functions).

use crate::json_scan::{skip_nested, skip_nested_within, string_end, ws};
use std::ops::Range;

/// What one walk over the top level of an answer (or of one streamed chunk) found: the members
/// both usage readers look at, so that a chunk read for its usage is not walked again to decide
/// whether it is the usage chunk.
#[derive(Debug, Default)]
pub struct Top {
    /// The first `usage` member: its value's span, and its counts when [`usage_counts`] reads
    /// them (`Some(None)`: `null`); `None` there: serde_json decides on the span.
    usage: Option<(Range<usize>, Option<Option<Counts>>)>,
    /// The first `choices` member's value.
    choices: Option<Range<usize>>,
    usage_twice: bool,
    choices_twice: bool,
    /// A `response` key (the Responses API shape, read by the full parse).
    response: bool,
}

pub enum Walk {
    /// The raw value of the one top-level `usage` key, if any, with its counts when read.
    Found(Option<(Range<usize>, Option<Option<Counts>>)>),
    Unsure,
}

/// Walks the top level of `json` once; `None` when it is not one object (a key with an
/// escape, unbalanced brackets, an unclosed string, bytes after it).
pub fn top(json: &[u8]) -> Option<Top> {
    let mut t = Top::default();
    let end = members(json, ws(json, 0), |key, start| match key {
        b"usage" => {
            let (end, counts) = usage_value(json, start)?;
            if t.usage.is_some() {
                t.usage_twice = true;
            } else {
                t.usage = Some((start..end, counts));
            }
            Some(end)
        }
        b"choices" => {
            let end = skip_value(json, start)?;
            if t.choices.is_some() {
                t.choices_twice = true;
            } else {
                t.choices = Some(start..end);
            }
            Some(end)
        }
        b"response" => {
            t.response = true;
            skip_value(json, start)
        }
        _ => skip_value(json, start),
    })?;
    (ws(json, end) == json.len()).then_some(t)
}

impl Top {
    /// The one top-level `usage`: certain only with one `usage` key and no `response` key.
    pub fn usage(&self) -> Walk {
        if self.usage_twice || self.response {
            return Walk::Unsure;
        }
        Walk::Found(self.usage.clone())
    }

    /// Whether the chunk is the usage chunk that `stream_options.include_usage` adds: its
    /// `choices` an empty array and its `usage` present and not `null` (what serde_json reads
    /// into `choices: Option<Vec<_>>` and `usage: Option<_>`). `None` when unsure (a key given
    /// twice): the caller then asks serde_json. Numbers and literals in the skipped members are
    /// not checked.
    pub fn is_usage_chunk(&self, json: &[u8]) -> Option<bool> {
        if self.usage_twice || self.choices_twice {
            return None;
        }
        let empty = self
            .choices
            .clone()
            .and_then(|r| json.get(r))
            .is_some_and(|v| v.first() == Some(&b'[') && ws(v, 1) + 1 == v.len());
        let usage = self.usage.as_ref().and_then(|(r, _)| json.get(r.clone())).is_some_and(|v| v != b"null");
        Some(empty && usage)
    }
}

/// Walks the object that opens at `open`, calling `member` with each key (without quotes) and
/// the index where its value starts; `member` answers the index just past the value. The index
/// just past the closing brace. `None` when it is not an object, a key has an escape, or
/// `member` says so.
fn members(json: &[u8], open: usize, mut member: impl FnMut(&[u8], usize) -> Option<usize>) -> Option<usize> {
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
        i = member(key, start)?;
        i = ws(json, i);
        match *json.get(i)? {
            b',' => i = ws(json, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index just past the value that starts at `i`. Always inlined: the walk calls it for
/// most members, and a call costs as much as skipping a short value.
#[inline(always)]
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match *json.get(i)? {
        b'"' => Some(string_end(json, i)?.0 + 1),
        b'{' | b'[' => skip_nested(json, i),
        _ => Some(i + scalar_len(json, i)?),
    }
}

/// The length of the number or literal at `i`: up to a comma, a closing bracket or white space.
fn scalar_len(json: &[u8], i: usize) -> Option<usize> {
    let rest = json.get(i..)?;
    let n = rest.iter().position(|&b| SCALAR_END[usize::from(b)]).unwrap_or(rest.len());
    (n > 0).then_some(n)
}

/// The bytes [`scalar_len`] stops at (a table: one load a byte instead of seven tests).
static SCALAR_END: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let ends = *b",}] \t\n\r";
    while k < ends.len() {
        t[ends[k] as usize] = true;
        k += 1;
    }
    t
};

/// Whether a streamed chunk is the usage chunk (see [`Top::is_usage_chunk`]); `None` when
/// unsure (not an object, a key with an escape or given twice).
pub fn is_usage_chunk(json: &[u8]) -> Option<bool> {
    top(json)?.is_usage_chunk(json)
}

/// The counts of a `usage` object, by the names [`FIELDS`] lists: `None` where absent or null.
pub type Counts = [Option<u64>; 5];

/// The names of the counts, in [`Counts`]' order.
pub const FIELDS: [&[u8]; 5] =
    [b"prompt_tokens", b"completion_tokens", b"input_tokens", b"output_tokens", b"total_tokens"];

/// Reads a `usage` value (the span [`Top::usage`] found) as serde_json reads it into
/// optional integer fields: `Some(None)` for `null`, the counts of an object whose counts are
/// plain non-negative integers or `null` and whose other members are skipped. Anything else
/// (escapes in names, a count given twice, signs, fractions, exponents, another shape) is
/// `None`, for serde_json to decide. The walk reads the counts in place ([`usage_value`]); this
/// reads a span, and the tests check the two agree.
#[cfg(test)]
pub fn usage_counts(v: &[u8]) -> Option<Option<Counts>> {
    if v == b"null" {
        return Some(None);
    }
    let (end, counts) = counts_at(v, 0, skip_value)?;
    (end == v.len()).then_some(Some(counts))
}

/// The `usage` value that starts at `start` in the document: the index past it and its counts
/// as [`usage_counts`] reads its span, in one walk. An object is read by a walk stricter than
/// [`skip_value`] where they could part (a number or literal holding a quote or an opening
/// bracket, nesting at the skip's depth limit), so where it reads counts it ends where the skip
/// ends; otherwise the value is skipped and its counts left to serde_json.
fn usage_value(json: &[u8], start: usize) -> Option<(usize, Option<Option<Counts>>)> {
    if json.get(start) == Some(&b'{') {
        if let Some((end, counts)) = counts_at(json, start, strict_skip) {
            return Some((end, Some(Some(counts))));
        }
    }
    let end = skip_value(json, start)?;
    Some((end, (json.get(start..end)? == b"null").then_some(None)))
}

/// [`skip_value`] for a member of an object that [`skip_nested`] would skip whole: nested
/// values one level less deep, numbers and literals only of their own characters.
fn strict_skip(json: &[u8], i: usize) -> Option<usize> {
    match *json.get(i)? {
        b'"' => Some(string_end(json, i)?.0 + 1),
        b'{' | b'[' => skip_nested_within(json, i, 127),
        _ => {
            let n = scalar_len(json, i)?;
            json[i..i + n].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-')).then_some(i + n)
        }
    }
}

/// The object at `open` read for its counts, members other than the counts passed over by
/// `skip`: the index past it and the counts.
fn counts_at(json: &[u8], open: usize, skip: fn(&[u8], usize) -> Option<usize>) -> Option<(usize, Counts)> {
    let mut counts: Counts = [None; 5];
    let mut seen = [false; 5];
    let end = members(json, open, |key, start| match FIELDS.iter().position(|name| *name == key) {
        Some(f) => {
            if std::mem::replace(&mut seen[f], true) {
                return None;
            }
            let (end, n) = count_at(json, start)?;
            counts[f] = n;
            Some(end)
        }
        None => skip(json, start),
    })?;
    Some((end, counts))
}

/// The count whose value starts at `i`: the index past it and [`count`] of its [`scalar_len`]
/// bytes. Plain digits (the usual count) are read and checked in one pass; anything else goes
/// the long way.
#[inline(always)]
fn count_at(json: &[u8], i: usize) -> Option<(usize, Option<u64>)> {
    let mut at = i;
    let mut n: u64 = 0;
    while let Some(&d) = json.get(at) {
        let Some(v) = d.checked_sub(b'0').filter(|v| *v < 10) else { break };
        // Past u64: `count` refuses the value whatever follows the digits.
        n = n.checked_mul(10)?.checked_add(u64::from(v))?;
        at += 1;
    }
    if at > i && json.get(at).is_none_or(|&b| SCALAR_END[usize::from(b)]) {
        // A leading zero is refused, as by `count`.
        return (at == i + 1 || json[i] != b'0').then_some((at, Some(n)));
    }
    let end = i + scalar_len(json, i)?;
    Some((end, count(&json[i..end])?))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass read of a count answers what [`scalar_len`] then [`count`] answer, at
    /// every offset of counts followed by every byte: digits at and past u64's limit, leading
    /// zeros, signs, fractions, exponents, literals, cut-short values.
    #[test]
    fn count_at_reads_as_scalar_len_then_count() {
        let old = |json: &[u8], i: usize| {
            let end = i + scalar_len(json, i)?;
            Some((end, count(&json[i..end])?))
        };
        let values = [
            "0",
            "00",
            "01",
            "7",
            "16",
            "100",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "184467440737095516150",
            "-1",
            "1.5",
            "1e2",
            "1E2",
            "+1",
            "null",
            "nul",
            "nullx",
            "true",
            "",
            "0x1",
            "1_0",
            "١",
        ];
        for v in values {
            for c in 0..=255u8 {
                for tail in [vec![c], vec![c, b'1'], vec![]] {
                    let mut doc = b"{\"a\":".to_vec();
                    doc.extend_from_slice(v.as_bytes());
                    doc.extend_from_slice(&tail);
                    for i in 0..=doc.len() + 1 {
                        assert_eq!(count_at(&doc, i), old(&doc, i), "{:?} {i}", String::from_utf8_lossy(&doc));
                    }
                }
            }
        }
    }

    /// The table stops where the seven tests it replaced stop, for every byte at every place.
    #[test]
    fn scalar_len_stops_at_the_same_bytes() {
        let old = |json: &[u8], i: usize| {
            let n = json
                .get(i..)?
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .count();
            (n > 0).then_some(n)
        };
        for c in 0..=255u8 {
            for doc in [vec![c], vec![b'1', c], vec![b'1', b'2', c, b'3'], vec![c, c, b','], vec![]] {
                for i in 0..=doc.len() + 1 {
                    assert_eq!(scalar_len(&doc, i), old(&doc, i), "{doc:?} {i}");
                }
            }
        }
    }
}
