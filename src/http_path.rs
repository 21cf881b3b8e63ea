//! The one canonical form of a request path, computed once before routing: the route table
//! matches it, the model-list filter reads it, and it is what the upstream receives. Two
//! spellings an upstream would treat alike (`/v1//models`, `/v1/%6dodels`, `/v1/./models`)
//! become one string; a path that cannot be made canonical without guessing (an encoded `/`
//! or `\` inside a segment, `..` above the root, a broken `%` escape) is refused.
//!
//! Rules, per segment, after splitting on `/`:
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; any other `%XX` is
//!   kept, with upper-case hex; `%2F` (`/`) and `%5C` (`\`) are refused, as are encoded
//!   control characters;
//! - a raw `\` or control character is refused; other characters outside RFC 3986's `pchar`
//!   set are percent-encoded;
//! - empty segments (repeated slashes) and `.` are dropped, `..` removes the segment before
//!   it; a trailing slash is kept (`/mcp/` and `/mcp` may differ upstream).

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with \"/\"")]
    NotAbsolute,
    #[error("the path has a \"%\" that is not followed by two hex digits")]
    BadEscape,
    #[error("the path has an encoded \"/\" or \"\\\" inside a segment")]
    EncodedSeparator,
    #[error("the path has a \"\\\"")]
    Backslash,
    #[error("the path has a control character")]
    Control,
    #[error("the path climbs above the root with \"..\"")]
    AboveRoot,
}

/// The canonical form of `path` (no query). Never panics, for any input.
pub fn normalise(path: &str) -> Result<String, PathError> {
    if already_canonical(path) {
        return Ok(path.to_string());
    }
    let Some(rest) = path.strip_prefix('/') else { return Err(PathError::NotAbsolute) };
    let mut out: Vec<String> = Vec::new();
    let mut trailing = false;
    for raw in rest.split('/') {
        let seg = decode_segment(raw)?;
        trailing = matches!(seg.as_str(), "" | "." | "..");
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => out.push(seg),
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for seg in &out {
        canonical.push('/');
        canonical.push_str(seg);
    }
    if trailing || out.is_empty() {
        canonical.push('/');
    }
    Ok(canonical)
}

/// A path the rules leave as it is (the common case, checked without building segments):
/// absolute, only `pchar` bytes and `/`, no `%`, no empty segment but a trailing one, no `.`
/// or `..` segment.
fn already_canonical(path: &str) -> bool {
    let Some(mut rest) = path.as_bytes().strip_prefix(b"/") else { return false };
    // Segment by segment (this runs on every request): a tight scan to the first byte that is
    // not `pchar` (`%` is not), which must be the `/` that ends the segment, or the end.
    loop {
        let len = rest.iter().position(|&c| !pchar(c)).unwrap_or(rest.len());
        let segment = &rest[..len];
        let more = len < rest.len();
        // Empty (unless it is the trailing one), `.` or `..`.
        if (segment.is_empty() && more) || (len <= 2 && !segment.is_empty() && segment.iter().all(|&c| c == b'.')) {
            return false;
        }
        match rest.get(len) {
            None => return true,
            Some(b'/') => rest = &rest[len + 1..],
            Some(_) => return false,
        }
    }
}

/// Fully percent-decodes one canonical segment (or a run of them, such as a model id after
/// `/models/`), as an upstream's router would; `None` when the bytes are not UTF-8.
pub fn decode(canonical: &str) -> Option<String> {
    let b = canonical.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], escaped(b, i)) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let v = escaped(b, i).ok_or(PathError::BadEscape)?;
            i += 3;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                v if v < 0x20 || v == 0x7f => return Err(PathError::Control),
                v if unreserved(v) => out.push(char::from(v)),
                v => push_escape(&mut out, v),
            }
            continue;
        }
        i += 1;
        match c {
            b'\\' => return Err(PathError::Backslash),
            c if c < 0x20 || c == 0x7f => return Err(PathError::Control),
            c if pchar(c) => out.push(char::from(c)),
            c => push_escape(&mut out, c),
        }
    }
    Ok(out)
}

/// The byte of a `%XX` escape starting at `i`.
fn escaped(b: &[u8], i: usize) -> Option<u8> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    let hi = hex(*b.get(i + 1)?)?;
    let lo = hex(*b.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, v: u8) {
    let _ = write!(out, "%{v:02X}");
}

const fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%` (escapes are handled apart).
const fn pchar_rule(c: u8) -> bool {
    unreserved(c)
        || matches!(c, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

/// [`pchar_rule`] for every byte, computed at compile time: one load per byte of every
/// request path instead of a call and a chain of comparisons.
const PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = pchar_rule(i as u8);
        i += 1;
    }
    t
};

#[inline]
fn pchar(c: u8) -> bool {
    PCHAR[usize::from(c)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The shortcut gives what the segment walk gives, on every path it takes.
    #[test]
    fn the_canonical_shortcut_agrees_with_the_walk() {
        let alphabet = ["/", "a", ".", "..", "%", "%41", "~", ":", "@", "!", " ", "\\", "é", "-"];
        let mut paths = vec![String::from("/")];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    paths.push(format!("/{a}{b}{c}"));
                    paths.push(format!("/v1/{a}/{b}{c}/"));
                }
            }
        }
        let mut taken = 0;
        for p in &paths {
            if already_canonical(p) {
                taken += 1;
                let walked = normalise(&format!("/./{}", &p[1..])).unwrap();
                assert_eq!(walked, *p, "{p}");
            }
        }
        assert!(taken > 100, "{taken}");
        // The one-pass check decides as the plain reading of its rule does.
        let rule = |path: &str| {
            let b = path.as_bytes();
            b.first() == Some(&b'/')
                && b.iter().all(|&c| c == b'/' || (c != b'%' && pchar(c)))
                && !path.contains("//")
                && !path.split('/').any(|seg| seg == "." || seg == "..")
        };
        for p in paths.iter().map(String::as_str).chain(["", "a", "//", "/...", "/.../", "/a/..", "/a/.", "/./"]) {
            assert_eq!(already_canonical(p), rule(p), "{p:?}");
        }
    }

    #[test]
    fn the_pchar_table_is_the_rule() {
        for c in 0..=255u8 {
            assert_eq!(pchar(c), pchar_rule(c), "{c}");
        }
        assert!(pchar(b'a') && pchar(b'@') && !pchar(b'%') && !pchar(b'/') && !pchar(b' ') && !pchar(0xe9));
    }

    #[test]
    fn spellings_of_one_path_become_one() {
        for p in [
            "/v1/models",
            "/v1//models",
            "/v1/%6dodels",
            "/v1/%6Dodels",
            "/v1/./models",
            "//v1/models",
            "/v1/x/../models",
        ] {
            assert_eq!(normalise(p).unwrap(), "/v1/models", "{p}");
        }
        assert_eq!(normalise("/v1/models/").unwrap(), "/v1/models/");
        assert_eq!(normalise("/v1/models//").unwrap(), "/v1/models/");
        assert_eq!(normalise("/v1/models/.").unwrap(), "/v1/models/");
        assert_eq!(normalise("/").unwrap(), "/");
        assert_eq!(normalise("/v1/..").unwrap(), "/");
        assert_eq!(normalise("/v1/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(normalise("/a/%3a%7e").unwrap(), "/a/%3A~");
        assert_eq!(normalise("/a/{x}").unwrap(), "/a/%7Bx%7D");
        assert_eq!(normalise("/a/é").unwrap(), "/a/%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalise("/v1/..%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalise("/v1/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalise("/v1/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalise("/v1/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalise("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalise("/v1/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalise("/v1/%2e%2e/%2e%2e"), Err(PathError::AboveRoot));
        assert_eq!(normalise("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%00"), Err(PathError::Control));
        assert_eq!(normalise("v1/models"), Err(PathError::NotAbsolute));
        assert_eq!(normalise(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn canonical_is_a_fixed_point() {
        for p in ["/v1/%41%3a/./b//c/", "/x/%25/y", "/é/{}", "/a/%7E"] {
            let once = normalise(p).unwrap();
            assert_eq!(normalise(&once).unwrap(), once, "{p}");
        }
        assert_eq!(decode("org%2Fx%3A1").as_deref(), Some("org/x:1"));
        assert_eq!(decode("%FF"), None);
    }

    /// Random paths from the characters that matter: no panic, and the result is canonical.
    #[test]
    fn random_paths_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let alphabet: Vec<char> = "/.%2eEfF5cC0aAz\\?#~é\u{0}".chars().collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let p: String = (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
            if let Ok(once) = normalise(&p) {
                assert_eq!(normalise(&once).as_ref(), Ok(&once), "{p:?}");
                let _ = decode(&once);
            }
        }
    }
}
