//! A walk over the top level of a JSON answer that finds the raw `usage` value without
//! parsing the rest (the answer's text, its choices) into anything. It gives an answer only
//! when that answer is certain to be serde_json's on the whole document: one `usage` key, no
//! `response` key (the Responses API shape, read by the full parse), no key spelt with an
//! escape, balanced brackets and closed strings. Anything else is [`Walk::Unsure`] and goes to
//! the full parse. Numbers and literals in the skipped parts are not checked: an answer that
//! is malformed only there still has its `usage` read.

use memchr::memchr2;
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
    let mut i = ws(json, 0);
    if *json.get(i)? != b'{' {
        return None;
    }
    i = ws(json, i + 1);
    let mut usage = None;
    if *json.get(i)? == b'}' {
        return (ws(json, i + 1) == json.len()).then_some(None);
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
        match key {
            b"usage" if usage.is_some() => return None,
            b"usage" => usage = Some(start..i),
            b"response" => return None,
            _ => {}
        }
        i = ws(json, i);
        match *json.get(i)? {
            b',' => i = ws(json, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    (ws(json, i + 1) == json.len()).then_some(usage)
}

fn ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index of the quote closing the string that opens at `i`, and whether it had escapes.
fn string_end(json: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut at = i + 1;
    let mut escaped = false;
    loop {
        let rest = json.get(at..)?;
        let k = at + memchr2(b'"', b'\\', rest)?;
        if json[k] == b'"' {
            return Some((k, escaped));
        }
        escaped = true;
        at = k + 2;
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

/// The bytes [`skip_nested`] stops at.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// Past the object or array that opens at `i`; brackets must pair up. Deeper than 128 levels:
/// `None` (the full parse decides).
fn skip_nested(json: &[u8], i: usize) -> Option<usize> {
    // One bit per open bracket, 1 for an object.
    let (mut kinds, mut depth) = (0u128, 0u32);
    let mut at = i;
    loop {
        at += json.get(at..)?.iter().position(|&b| STRUCTURAL[usize::from(b)])?;
        match json[at] {
            b'"' => at = string_end(json, at)?.0,
            c @ (b'{' | b'[') => {
                if depth == 128 {
                    return None;
                }
                kinds = (kinds << 1) | u128::from(c == b'{');
                depth += 1;
            }
            c => {
                if depth == 0 || (kinds & 1 == 1) != (c == b'}') {
                    return None;
                }
                kinds >>= 1;
                depth -= 1;
            }
        }
        at += 1;
        if depth == 0 {
            return Some(at);
        }
    }
}
