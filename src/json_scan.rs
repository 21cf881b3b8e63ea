//! The one JSON tokenizer of the gateway (RFC 8259), shared by the request-body scan
//! ([`crate::request_body`]) and the usage walk over answers (`crate::proxy::usage`). It
//! works on byte offsets into the document and builds nothing.
//!
//! The strict functions ([`value`], [`string`], [`number`]) accept only what serde_json
//! accepts and answer `None` for anything else, and also where an exact answer would need
//! more care than the common case deserves (a `\u` escape of a lone surrogate): callers treat
//! `None` as "ask serde_json". The lenient ones ([`string_end`], [`skip_nested`]) only pair
//! quotes and brackets, for the usage walk, which reads an answer malformed elsewhere.

use memchr::memchr2;

/// The index of the first byte at or after `i` that is not JSON white space.
#[inline]
pub fn ws(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = json.get(i) {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `x` below `n` (`n` ≤ 128), flagged by their high bit. Flags above the lowest
/// one may be false (a borrow), the lowest is exact: only the first match is read.
#[inline]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// The bytes of `x` where a string's body stops (`"`, `\\`, and when `control` a control
/// character), flagged by their high bit; only the lowest flag is exact (see [`below`]).
#[inline(always)]
fn stops(x: u64, control: bool) -> u64 {
    let mut hits = below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1);
    if control {
        hits |= below(x, 0x20);
    }
    hits
}

/// Where a string's body stops: the index in `rest` of its first `"`, `\\` or (when
/// `control`) control character. Eight bytes at a time for the first 32 (most keys and
/// values end there), then memchr's vectorised search, which costs a call but runs through
/// long texts.
#[inline(always)]
fn string_stop(rest: &[u8], control: bool) -> Option<usize> {
    for (n, chunk) in rest.chunks_exact(8).take(4).enumerate() {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else { break };
        let hits = stops(u64::from_le_bytes(word), control);
        if hits != 0 {
            return Some(n * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let k = (rest.len() / 8).min(4) * 8;
    let tail = rest.get(k..)?;
    if k < 32 {
        return tail.iter().position(|&c| c == b'"' || c == b'\\' || (control && c < 0x20)).map(|p| k + p);
    }
    let at = memchr2(b'"', b'\\', tail);
    let before = &tail[..at.unwrap_or(tail.len())];
    if control && has_control(before) {
        return before.iter().position(|&c| c < 0x20).map(|p| k + p);
    }
    at.map(|a| k + a)
}

/// The index of the quote closing the string that opens at `i`, and whether it had escapes
/// (lenient: escapes and control characters are not checked). Always inlined: the usage walk
/// calls it for every key, and a call costs as much as the search in a short key.
#[inline(always)]
pub fn string_end(json: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut at = i + 1;
    let mut escaped = false;
    loop {
        let k = at + quote_or_backslash(json, at)?;
        if json[k] == b'"' {
            return Some((k, escaped));
        }
        escaped = true;
        at = k + 2;
    }
}

/// The index in `json[at..]` of its first `"` or `\\`: eight bytes at a time for the first 32
/// (inlined: most keys and values end there, and a shorter loop than [`string_stop`]'s keeps
/// the callers' registers), then memchr's vectorised search, out of line.
#[inline(always)]
fn quote_or_backslash(json: &[u8], at: usize) -> Option<usize> {
    let mut n = 0;
    while n < 32 {
        let Some(Ok(word)) = json.get(at + n..at + n + 8).map(<[u8; 8]>::try_from) else { break };
        let hits = stops(u64::from_le_bytes(word), false);
        if hits != 0 {
            return Some(n + (hits.trailing_zeros() / 8) as usize);
        }
        n += 8;
    }
    Some(n + quote_or_backslash_tail(json.get(at + n..)?)?)
}

/// The vectorised search of long strings, out of line: its call is rare and its set-up would
/// crowd the inlined loop.
#[inline(never)]
fn quote_or_backslash_tail(rest: &[u8]) -> Option<usize> {
    memchr2(b'"', b'\\', rest)
}

/// What [`skip_nested`] does at each byte: 0 nothing, else [`QUOTE`], or [`OPEN`] or
/// [`CLOSE`] with the low bit set for an object's brace (one table load a byte, and the
/// bracket's kind without comparing it again).
static STRUCTURAL: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = QUOTE;
    t[b'{' as usize] = OPEN | 1;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE | 1;
    t[b']' as usize] = CLOSE;
    t
};
const QUOTE: u8 = 2;
const OPEN: u8 = 4;
const CLOSE: u8 = 8;

/// Past the object or array that opens at `i` (lenient: brackets must pair up and strings
/// close, nothing else is checked). Deeper than 128 levels: `None`.
pub fn skip_nested(json: &[u8], i: usize) -> Option<usize> {
    skip_nested_within(json, i, 128)
}

/// [`skip_nested`] with at most `max_depth` (≤ 128) levels.
pub fn skip_nested_within(json: &[u8], i: usize, max_depth: u32) -> Option<usize> {
    let max_depth = max_depth.min(128);
    // One bit per open bracket, 1 for an object.
    let (mut kinds, mut depth) = (0u128, 0u32);
    let mut at = i;
    loop {
        // Byte by byte: outside strings the bytes between two structural ones are few.
        let class = STRUCTURAL[usize::from(*json.get(at)?)];
        if class == 0 {
            at += 1;
            continue;
        }
        if class == QUOTE {
            at = string_end(json, at)?.0;
        } else if class & OPEN != 0 {
            if depth >= max_depth {
                return None;
            }
            kinds = (kinds << 1) | u128::from(class & 1);
            depth += 1;
        } else {
            if depth == 0 || (kinds & 1) as u8 != class & 1 {
                return None;
            }
            kinds >>= 1;
            depth -= 1;
        }
        at += 1;
        if depth == 0 {
            return Some(at);
        }
    }
}

/// Limits of the strict reader: nesting (counted from the document's top) and number length.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub depth: usize,
    pub number_len: usize,
}

/// Strict: the index of the quote closing the string that opens at `i` (which must be a
/// quote), and whether it holds escapes. `None` for a control character, a bad escape, a
/// `\u` surrogate not in a high-low pair, or no closing quote. The bytes must already be
/// known to be UTF-8 (the caller checks the whole document).
///
/// A string that closes within its first sixteen bytes without an escape (most keys and
/// short values) is read here a word at a time, inlined; any other goes to [`string_long`].
#[inline(always)]
pub fn string(json: &[u8], i: usize) -> Option<(usize, bool)> {
    if json.get(i) == Some(&b'"') {
        for at in [i + 1, i + 9] {
            let Some(Ok(word)) = json.get(at..at + 8).map(<[u8; 8]>::try_from) else { break };
            let hits = stops(u64::from_le_bytes(word), true);
            if hits != 0 {
                let k = at + (hits.trailing_zeros() / 8) as usize;
                if json[k] == b'"' {
                    return Some((k, false));
                }
                break;
            }
        }
    }
    string_long(json, i)
}

/// [`string`], whole.
fn string_long(json: &[u8], i: usize) -> Option<(usize, bool)> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let mut at = i + 1;
    let mut escaped = false;
    loop {
        let rest = json.get(at..)?;
        at += string_stop(rest, true)?;
        match json[at] {
            b'"' => return Some((at, escaped)),
            b'\\' => {}
            _ => return None,
        }
        escaped = true;
        at = escape(json, at)?;
    }
}

/// Whether `bytes` holds a control character (U+0000 to U+001F), which a JSON string may
/// not hold raw. Written as a fold so that it vectorises.
#[inline]
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &c| acc | u8::from(c < 0x20)) != 0
}

/// Past the escape whose backslash is at `i`.
fn escape(json: &[u8], i: usize) -> Option<usize> {
    match *json.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => {
            let cp = hex4(json, i + 2)?;
            match cp {
                0xD800..=0xDBFF => {
                    // A high surrogate must be followed by an escaped low one.
                    if json.get(i + 6) != Some(&b'\\') || json.get(i + 7) != Some(&b'u') {
                        return None;
                    }
                    matches!(hex4(json, i + 8)?, 0xDC00..=0xDFFF).then_some(i + 12)
                }
                0xDC00..=0xDFFF => None,
                _ => Some(i + 6),
            }
        }
        _ => None,
    }
}

fn hex4(json: &[u8], i: usize) -> Option<u32> {
    let digits = json.get(i..i + 4)?;
    let mut v = 0u32;
    for &d in digits {
        v = (v << 4) | char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// Strict: past the number that starts at `i` (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`),
/// `None` when it breaks that grammar or is longer than `max_len` characters. What follows
/// is the caller's to check.
pub fn number(json: &[u8], i: usize, max_len: usize) -> Option<usize> {
    let digits = |mut at: usize| {
        let from = at;
        while json.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        (at > from).then_some(at)
    };
    let mut at = i;
    if json.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match *json.get(at)? {
        b'0' => at + 1,
        b'1'..=b'9' => digits(at)?,
        _ => return None,
    };
    if json.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if let Some(b'e' | b'E') = json.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = json.get(at) {
            at += 1;
        }
        at = digits(at)?;
    }
    (at - i <= max_len).then_some(at)
}

/// Strict: past the value that starts at `i` (no white space before it), validated as a
/// whole; `depth` is how many arrays and objects enclose it. `None` when it is not exactly
/// one JSON value, nests deeper than the limit, or has a number longer than the limit.
/// A string (most values the request scan reads) is read inline, anything else by [`any_value`].
#[inline(always)]
pub fn value(json: &[u8], i: usize, depth: usize, limits: Limits) -> Option<usize> {
    match json.get(i) {
        Some(b'"') => Some(string(json, i)?.0 + 1),
        _ => any_value(json, i, depth, limits),
    }
}

/// [`value`], whole.
fn any_value(json: &[u8], mut i: usize, depth: usize, limits: Limits) -> Option<usize> {
    // The containers opened here, one bit each (1 for an object): at most 128 deep.
    let (mut kinds, mut open) = (0u128, 0usize);
    loop {
        // A value starts at `i`.
        match *json.get(i)? {
            c @ (b'{' | b'[') => {
                if depth + open + 1 > limits.depth || open >= 128 {
                    return None;
                }
                let object = c == b'{';
                kinds = (kinds << 1) | u128::from(object);
                open += 1;
                i = ws(json, i + 1);
                if json.get(i) == Some(&if object { b'}' } else { b']' }) {
                    i += 1;
                    kinds >>= 1;
                    open -= 1;
                } else {
                    if object {
                        i = key(json, i)?;
                    }
                    continue;
                }
            }
            b'"' => i = string(json, i)?.0 + 1,
            b't' => i = literal(json, i, b"true")?,
            b'f' => i = literal(json, i, b"false")?,
            b'n' => i = literal(json, i, b"null")?,
            _ => i = number(json, i, limits.number_len)?,
        }
        // After a value: close containers, or go on to the next member or element.
        loop {
            if open == 0 {
                return Some(i);
            }
            i = ws(json, i);
            let object = kinds & 1 == 1;
            match *json.get(i)? {
                b',' => {
                    i = ws(json, i + 1);
                    if object {
                        i = key(json, i)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            kinds >>= 1;
            open -= 1;
        }
    }
}

/// Past `"key"` `:` and the white space after it, at the start of the member's value.
fn key(json: &[u8], i: usize) -> Option<usize> {
    let (end, _) = string(json, i)?;
    let at = ws(json, end + 1);
    (*json.get(at)? == b':').then(|| ws(json, at + 1))
}

/// Past the literal `word` at `i`.
#[inline]
pub fn literal(json: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (json.get(i..i + word.len())? == word).then_some(i + word.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { depth: 128, number_len: 256 };

    /// Whether serde_json reads `text` as one value (any value; its depth limit is 128).
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    fn strict_accepts(text: &str) -> Option<bool> {
        let b = text.as_bytes();
        let start = ws(b, 0);
        value(b, start, 0, LIMITS).map(|end| ws(b, end) == b.len())
    }

    /// Every document the strict reader accepts, serde_json accepts; and it refuses (or is
    /// unsure of) every document serde_json refuses.
    fn agrees(text: &str) {
        if let Some(true) = strict_accepts(text) {
            assert!(serde_accepts(text), "strict accepts what serde_json refuses: {text:?}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_hand_written_documents() {
        let accepted = [
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "1e5",
            "1E+5",
            "1e-5",
            "-0.0e0",
            "123456789012345678901234567890",
            "1e400",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u0041\u00e9""#,
            r#""\ud83d\ude00""#,
            "\"caf\u{e9} \u{1F600}\"",
            "[]",
            "{}",
            "[1,2,[3,{}]]",
            "\"\u{7f}\"",
            r#"{"a":1,"a":2}"#,
            r#" { "a" : [ true , false , null ] } "#,
            "\t\n\r [ ]",
            r#"{"":""}"#,
            r#"{"\u0000":1}"#,
        ];
        for t in accepted {
            assert!(serde_accepts(t), "{t}");
            assert_eq!(strict_accepts(t), Some(true), "{t}");
        }
        let refused = [
            "",
            " ",
            "01",
            "-",
            "+1",
            ".5",
            "1.",
            "1.e5",
            "1e",
            "1e+",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "tru",
            "truex",
            "nul",
            "True",
            r#"""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            "\"a\u{1}b\"",
            "\"a\nb\"",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{'a':1}"#,
            "[1]]",
            "[}",
            "{]",
            "1 2",
            "\u{c}1",
            "[1]\u{c}",
            "/*c*/1",
            r#"{"a":1}x"#,
            "[01]",
            "[-]",
            "[1e]",
            "[\"\\ud800\"]",
            "[\"\\udc00\"]",
            "[\"\\ud800\\u0041\"]",
            "[\"\\ud800x\"]",
        ];
        for t in refused {
            assert_ne!(strict_accepts(t), Some(true), "{t:?}");
            agrees(t);
        }
    }

    #[test]
    fn depth_and_number_limits() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(strict_accepts(&deep(128)), Some(true));
        assert_eq!(strict_accepts(&deep(129)), None);
        assert_eq!(value(deep(10).as_bytes(), 0, 118, LIMITS), Some(20));
        assert_eq!(value(deep(10).as_bytes(), 0, 119, LIMITS), None);
        let long = "1".repeat(256);
        assert_eq!(strict_accepts(&long), Some(true));
        assert_eq!(strict_accepts(&format!("{long}1")), None);
        assert_eq!(strict_accepts(&format!("-{}", "1".repeat(255))), Some(true));
        assert_eq!(strict_accepts(&format!("-{}", "1".repeat(256))), None);
    }

    /// A small deterministic generator (no dependency): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn gen_value(r: &mut Rng, depth: usize, out: &mut String) {
        const ATOMS: [&str; 24] = [
            "0",
            "-1",
            "12.5e-3",
            "1E9",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a b""#,
            r#""\n\"\\""#,
            r#""\u00e9\ud83d\ude00""#,
            "\"\u{e9}t\u{e9}\"",
            "18446744073709551616",
            "-0.0",
            r#""\/""#,
            "1e400",
            "01",
            "1.",
            r#""\ud800""#,
            r#""\q""#,
            "nulL",
            "-",
            "\"\u{1}\"",
            "+2",
        ];
        let ws = [" ", "", "\n", "\t", "\r", "\u{c}"];
        out.push_str(ws[r.below(ws.len() * 3) % ws.len()].get(..).unwrap_or(""));
        match if depth > 4 { 2 } else { r.below(3) } {
            0 => {
                out.push('[');
                for k in 0..r.below(4) {
                    if k > 0 {
                        out.push(',');
                    }
                    gen_value(r, depth + 1, out);
                }
                out.push(']');
            }
            1 => {
                out.push('{');
                for k in 0..r.below(4) {
                    if k > 0 {
                        out.push(',');
                    }
                    out.push_str(["\"k\"", "\"model\"", "\"\\u0041\"", "\"\"", "k"][r.below(5)]);
                    out.push(':');
                    gen_value(r, depth + 1, out);
                }
                out.push('}');
            }
            _ => out.push_str(ATOMS[r.below(ATOMS.len())]),
        }
    }

    /// The word-at-a-time search finds what a byte-by-byte one finds, at every length and
    /// alignment, among bytes that tempt its borrows (0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff).
    #[test]
    fn string_stop_is_a_plain_search() {
        let mut r = Rng(7);
        let pool = [b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x22 ^ 0x80, 0x5c ^ 0x01, 0x7f, 0x80, 0xff, b'#'];
        for _ in 0..20_000 {
            let len = r.below(90);
            let rare = r.below(40) + 2;
            let bytes: Vec<u8> =
                (0..len).map(|_| if r.below(rare) == 0 { pool[r.below(pool.len())] } else { b'x' }).collect();
            for control in [false, true] {
                let plain = bytes.iter().position(|&c| c == b'"' || c == b'\\' || (control && c < 0x20));
                assert_eq!(string_stop(&bytes, control), plain, "{bytes:?} {control}");
            }
        }
    }

    /// [`skip_nested_within`] as it was (a search for the next structural byte, then a match on
    /// it), and the plain byte-by-byte string end it used.
    fn skip_nested_reference(json: &[u8], i: usize, max_depth: u32) -> Option<usize> {
        let (mut kinds, mut depth) = (0u128, 0u32);
        let mut at = i;
        loop {
            at += json.get(at..)?.iter().position(|b| b"\"{}[]".contains(b))?;
            match json[at] {
                b'"' => at = string_end_reference(json, at)?.0,
                c @ (b'{' | b'[') => {
                    if depth >= max_depth.min(128) {
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

    fn string_end_reference(json: &[u8], i: usize) -> Option<(usize, bool)> {
        let mut at = i + 1;
        let mut escaped = false;
        loop {
            at += json.get(at..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
            if json[at] == b'"' {
                return Some((at, escaped));
            }
            escaped = true;
            at += 2;
        }
    }

    /// `n` generated documents, each whole, cut short at a random offset, and with `changes`
    /// of its bytes replaced by bytes of `with`.
    fn generated_docs(r: &mut Rng, n: usize, changes: usize, with: &[u8]) -> Vec<Vec<u8>> {
        let mut docs = Vec::new();
        for _ in 0..n {
            let mut doc = String::new();
            gen_value(r, 0, &mut doc);
            let mut bytes = doc.into_bytes();
            docs.push(bytes.clone());
            let cut = r.below(bytes.len() + 1);
            docs.push(bytes[..cut].to_vec());
            for _ in 0..changes {
                let at = r.below(bytes.len().max(1));
                if let Some(b) = bytes.get_mut(at) {
                    *b = with[r.below(with.len())];
                }
            }
            docs.push(bytes);
        }
        docs
    }

    /// The lenient reads answer what the plain byte-by-byte ones answer, at every offset and
    /// depth limit of generated documents, cut short or changed, and of strings holding quotes,
    /// backslashes and brackets at every distance (either side of the 32 bytes read inline).
    #[test]
    fn the_lenient_reads_are_the_plain_ones() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        let mut docs = generated_docs(&mut r, 1500, 2, b"\"\\{}[]x");
        let pool = [b'"', b'\\', b'{', b'}', b'[', b']', 0x00, 0x80, 0xff];
        for len in 0..80 {
            for _ in 0..40 {
                let mut d = vec![b'[', b'"'];
                d.extend((0..len).map(|_| if r.below(12) == 0 { pool[r.below(pool.len())] } else { b'x' }));
                d.extend_from_slice(b"\",{\"k\":[\"a\\\"b\"]}]");
                docs.push(d);
            }
        }
        let deep = |n: usize| format!("{}{}", "[{\"a\":".repeat(n), "}]".repeat(n)).into_bytes();
        docs.extend([deep(63), deep(64), deep(65), b"[]]".to_vec(), b"}".to_vec(), b"\"a\"".to_vec()]);
        for d in &docs {
            for i in 0..=d.len() + 1 {
                assert_eq!(string_end(d, i), string_end_reference(d, i), "{d:?} {i}");
                for max_depth in [0, 1, 2, 127, 128, 300] {
                    assert_eq!(
                        skip_nested_within(d, i, max_depth),
                        skip_nested_reference(d, i, max_depth),
                        "{d:?} {i} {max_depth}"
                    );
                }
            }
        }
    }

    /// The inlined reads of short strings and of string values answer what the whole readers
    /// answer, at every offset of generated documents, cut short or changed, among bytes that
    /// stop a string (quotes, backslashes, control characters) at every distance from a quote.
    #[test]
    fn the_inlined_reads_are_the_whole_ones() {
        let mut r = Rng(0x5DEE_CE66_D1CE_F00D);
        let mut docs = generated_docs(&mut r, 2000, 1, b"\"\\\x00\x1fa{[u");
        let pool = [b'"', b'\\', 0x00, 0x1f, 0x20, b'a', b'u', b'0', 0x7f, 0xc3, 0xa9];
        for len in 0..40 {
            for _ in 0..200 {
                let mut d = vec![b'"'];
                d.extend((0..len).map(|_| if r.below(6) == 0 { pool[r.below(pool.len())] } else { b'x' }));
                docs.push(d);
            }
        }
        for d in &docs {
            for i in 0..=d.len() {
                assert_eq!(string(d, i), string_long(d, i), "{d:?} {i}");
                assert_eq!(value(d, i, 1, LIMITS), any_value(d, i, 1, LIMITS), "{d:?} {i}");
            }
        }
    }

    /// Generated documents, and every one of them cut short or with one byte changed.
    #[test]
    fn agrees_with_serde_json_on_a_generated_corpus() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut both = 0;
        for _ in 0..3000 {
            let mut doc = String::new();
            gen_value(&mut r, 0, &mut doc);
            agrees(&doc);
            if strict_accepts(&doc) == Some(true) {
                both += 1;
            }
            if serde_accepts(&doc) && !doc.contains("\\ud800\"") && !doc.contains('\u{c}') {
                assert_eq!(strict_accepts(&doc), Some(true), "serde_json accepts {doc:?}");
            }
            let bytes = doc.as_bytes();
            for _ in 0..4 {
                let cut = r.below(bytes.len() + 1);
                if let Ok(t) = std::str::from_utf8(&bytes[..cut]) {
                    agrees(t);
                }
                let mut m = bytes.to_vec();
                let at = r.below(m.len().max(1));
                if let Some(b) = m.get_mut(at) {
                    let alphabet = b"{}[]\",:\\ 0-.eEtu\x01x";
                    *b = alphabet[r.below(alphabet.len())];
                }
                if let Ok(t) = std::str::from_utf8(&m) {
                    agrees(t);
                }
            }
        }
        assert!(both > 300, "{both}");
    }
}
