//! Removes credentials from text bound for a log line or a panic message.
//!
//! Fail closed: values are recognised by **shape** first, so a key the gateway has never seen
//! (a wrong client key is a secret too) is removed as surely as a configured one:
//! - the value after a credential-bearing header name (`Authorization: …`, `"x-api-key":
//!   "…"`, the wire form `…\r\n`, `name=…`), whatever the casing;
//! - a token after `Bearer ` or `Basic `;
//! - credential query parameters (`?api_key=…`, `&token=…`, …) and WebSocket subprotocol
//!   keys (`openai-insecure-api-key.…`, `api_key.…`);
//! - Telegram bot tokens (`/bot<id>:<secret>` in Bot API URLs, or a long `<id>:<secret>`);
//! - `sk-…` keys;
//! - byte arrays printed by `Debug` (`[104, 116, …]`, e.g. a raw request target or a key
//!   digest): they cannot be read for shapes, so they are elided whole.
//!
//! Then by **value**: secrets the process knows (provider keys, the runner's bot token and
//! gateway key, client keys' digests) are registered with [`remember`] and removed in clear,
//! SHA-256 hex, base64 and percent-encoded form. See docs/security.md.

use base64::Engine;
use memchr::memmem;
use once_cell::sync::Lazy;
use std::borrow::Cow;
use std::sync::RwLock;

/// What a removed value is replaced by.
pub const MARK: &str = "[redacted]";

/// Header names (lower case) whose value is a credential.
const HEADERS: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "sec-websocket-protocol",
    "x-telegram-bot-api-secret-token",
];

/// Query parameter names (lower case) whose value is a credential.
const PARAMS: [&str; 13] = [
    "api_key",
    "api-key",
    "apikey",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "secret",
    "client_secret",
    "password",
    "sig",
];

/// Authentication schemes followed by a credential.
const SCHEMES: [&str; 2] = ["bearer ", "basic "];

/// Prefixes of WebSocket subprotocol entries that carry a key (src/proxy/credentials.rs).
const PROTOCOL_KEYS: [&str; 2] = ["openai-insecure-api-key.", "api_key."];

/// Shortest secret redacted by value; shorter ones would blank out ordinary words.
const MIN_KNOWN: usize = 6;

/// Forms of the secrets this process knows.
static KNOWN: Lazy<RwLock<Vec<String>>> = Lazy::new(|| RwLock::new(Vec::new()));

/// Registers a secret: its clear text, SHA-256 (hex, both cases), base64 (standard and
/// URL-safe, padded or not) and percent-encoded forms are redacted from now on.
pub fn remember(secret: &str) {
    if secret.len() < MIN_KNOWN {
        return;
    }
    let mut forms = forms_of(secret.as_bytes());
    forms.push(secret.to_string());
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    forms.push(encoded);
    add(forms);
}

/// Registers a SHA-256 digest the process holds instead of the secret (client keys).
pub fn remember_digest(digest: &[u8; 32]) {
    let hex = hex::encode(digest);
    add(vec![hex.to_ascii_uppercase(), hex]);
}

fn forms_of(secret: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex = hex::encode(crate::keys::sha256(secret));
    let mut forms = vec![hex.to_ascii_uppercase(), hex];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms
}

fn add(forms: Vec<String>) {
    let mut known = match KNOWN.write() {
        Ok(k) => k,
        Err(poisoned) => poisoned.into_inner(),
    };
    for f in forms {
        if f.len() >= MIN_KNOWN && !known.contains(&f) {
            known.push(f);
        }
    }
}

/// `text` with every credential replaced by [`MARK`]; borrowed when there was none.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut spans = shapes(text);
    known_values(text, &mut spans);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in merged {
        out.push_str(&text[at..start]);
        out.push_str(MARK);
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// Byte ranges (on char boundaries: every rule stops at ASCII bytes) to remove.
fn shapes(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let l = lower.as_bytes();
    let mut spans = Vec::new();
    for name in HEADERS {
        for at in memmem::find_iter(l, name.as_bytes()) {
            if word_start(l, at) {
                if let Some(span) = header_value(b, at + name.len()) {
                    spans.push(span);
                }
            }
        }
    }
    for name in PARAMS {
        for at in memmem::find_iter(l, name.as_bytes()) {
            let after = at + name.len();
            if at > 0 && matches!(l[at - 1], b'?' | b'&' | b';') && l.get(after) == Some(&b'=') {
                push_run(&mut spans, b, after + 1, is_query_char);
            }
        }
    }
    for scheme in SCHEMES {
        for at in memmem::find_iter(l, scheme.as_bytes()) {
            if word_start(l, at) {
                push_run(&mut spans, b, at + scheme.len(), is_token_char);
            }
        }
    }
    for prefix in PROTOCOL_KEYS {
        for at in memmem::find_iter(l, prefix.as_bytes()) {
            push_run(&mut spans, b, at + prefix.len(), is_token_char);
        }
    }
    for at in memmem::find_iter(l, b"sk-") {
        if word_start(l, at) && run_len(b, at + 3, is_token_char) >= 16 {
            push_run(&mut spans, b, at, is_token_char);
        }
    }
    bot_tokens(b, &mut spans);
    byte_arrays(b, &mut spans);
    char_arrays(b, &mut spans);
    spans
}

fn word_start(l: &[u8], at: usize) -> bool {
    at == 0 || !(l[at - 1].is_ascii_alphanumeric() || matches!(l[at - 1], b'-' | b'_'))
}

/// After a header name: `"`? spaces `:` or `=` spaces `"`? value. The value ends at an
/// unescaped quote, a line break (raw or `\r`/`\n` as `Debug` prints it), or the end;
/// `name=value` forms also end at `&`, white space, `,`, `;`, `)`.
fn header_value(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    if b.get(i) == Some(&b'"') {
        i += 1;
    }
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let sep = *b.get(i)?;
    if sep != b':' && sep != b'=' {
        return None;
    }
    i += 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let quoted = b.get(i) == Some(&b'"');
    if quoted {
        i += 1;
    }
    let start = i;
    while i < b.len() {
        let c = b[i];
        let escape_break = c == b'\\' && matches!(b.get(i + 1), Some(b'r' | b'n'));
        let stop = match c {
            b'\r' | b'\n' => true,
            b'"' => !(quoted && i > start && b[i - 1] == b'\\'),
            b'&' | b' ' | b'\t' | b',' | b';' | b')' => sep == b'=' && !quoted,
            _ => escape_break,
        };
        if stop {
            break;
        }
        i += 1;
    }
    (i > start).then_some((start, i))
}

fn is_query_char(c: u8) -> bool {
    !matches!(
        c,
        b'&' | b' '
            | b'\t'
            | b'\r'
            | b'\n'
            | b'"'
            | b'\''
            | b'\\'
            | b'#'
            | b','
            | b';'
            | b')'
            | b']'
            | b'}'
            | b'<'
            | b'>'
    )
}

/// Characters of a token: base64, base64url, and the punctuation keys use.
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=' | b':')
}

fn run_len(b: &[u8], from: usize, ok: fn(u8) -> bool) -> usize {
    b.get(from..).map_or(0, |rest| rest.iter().take_while(|&&c| ok(c)).count())
}

fn push_run(spans: &mut Vec<(usize, usize)>, b: &[u8], from: usize, ok: fn(u8) -> bool) {
    let n = run_len(b, from, ok);
    if n > 0 {
        spans.push((from, from + n));
    }
}

/// `bot<digits>:<token>` after a `/` (any length: it is a Bot API URL), or `<digits>:<token>`
/// with at least 30 token characters (the shape of a bare bot token).
fn bot_tokens(b: &[u8], spans: &mut Vec<(usize, usize)>) {
    let secret_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    for colon in memchr::memchr_iter(b':', b) {
        let digits = b[..colon].iter().rev().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let id_start = colon - digits;
        let tail = b[colon + 1..].iter().take_while(|&&c| secret_char(c)).count();
        if tail == 0 {
            continue;
        }
        let url_form = id_start >= 4 && &b[id_start - 4..id_start] == b"/bot";
        let bare = digits >= 3 && tail >= 30 && (id_start == 0 || !b[id_start - 1].is_ascii_alphanumeric());
        if url_form || bare {
            spans.push((id_start, colon + 1 + tail));
        }
    }
}

/// `[n, n, …]` with at least 8 numbers up to 255: a byte string printed by `Debug`.
fn byte_arrays(b: &[u8], spans: &mut Vec<(usize, usize)>) {
    for open in memchr::memchr_iter(b'[', b) {
        let mut i = open + 1;
        let mut count = 0;
        loop {
            let digits = run_len(b, i, |c| c.is_ascii_digit());
            if digits == 0 || digits > 3 {
                break;
            }
            i += digits;
            count += 1;
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    while b.get(i) == Some(&b' ') {
                        i += 1;
                    }
                }
                Some(b']') => {
                    if count >= 8 {
                        spans.push((open + 1, i));
                    }
                    break;
                }
                _ => break,
            }
        }
    }
}

/// `['a', 'b', …]` with at least 8 characters: a string printed char by char by `Debug`
/// (Pingora's body reader traces chunks so). Escapes (`'\r'`, `'\''`, `'\u{1f}'`) count as
/// one character.
fn char_arrays(b: &[u8], spans: &mut Vec<(usize, usize)>) {
    for open in memchr::memchr_iter(b'[', b) {
        let mut i = open + 1;
        let mut count = 0;
        while b.get(i) == Some(&b'\'') {
            i += 1;
            if b.get(i) == Some(&b'\\') {
                i += 2; // the backslash and the escaped character (`'` too)
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
            } else {
                // One character, however many bytes.
                i += 1;
                while i < b.len() && (b[i] & 0xC0) == 0x80 {
                    i += 1;
                }
            }
            if b.get(i) != Some(&b'\'') {
                break;
            }
            i += 1;
            count += 1;
            match b.get(i) {
                Some(b',') if b.get(i + 1) == Some(&b' ') => i += 2,
                _ => break,
            }
        }
        if count >= 8 {
            // Up to the last complete element (a cut-off array is elided as far as it goes).
            let end = b[..i].iter().rposition(|&c| c == b'\'').map_or(i, |p| p + 1);
            spans.push((open + 1, end));
        }
    }
}

fn known_values(text: &str, spans: &mut Vec<(usize, usize)>) {
    let known = match KNOWN.read() {
        Ok(k) => k,
        Err(poisoned) => poisoned.into_inner(),
    };
    for form in known.iter() {
        for at in memmem::find_iter(text.as_bytes(), form.as_bytes()) {
            // Widen to char boundaries (a form is ASCII, but the text around it may not be).
            let (mut start, mut end) = (at, at + form.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            while !text.is_char_boundary(end) {
                end += 1;
            }
            spans.push((start, end));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact(s).into_owned()
    }

    #[test]
    fn header_forms() {
        let dbg = r#"RequestHeader { headers: {"authorization": "Bearer sk-abc", "host": "h", "x-api-key": "k\"q"} }"#;
        let out = r(dbg);
        assert!(!out.contains("sk-abc") && !out.contains("k\\\"q"), "{out}");
        assert!(out.contains("\"host\": \"h\""), "{out}");
        let wire = r"b'POST /v1 HTTP/1.1\r\nAuthorization: Bearer wrong key\r\nHost: x\r\n'";
        let out = r(wire);
        assert!(!out.contains("wrong key") && out.contains("Host: x"), "{out}");
        assert_eq!(r("X-Api-Key: zz top\nnext"), "X-Api-Key: [redacted]\nnext");
        assert_eq!(
            r("sec-websocket-protocol=chat, api_key.k9"),
            "sec-websocket-protocol=[redacted], api_key.[redacted]"
        );
        assert_eq!(r("no authorization header"), "no authorization header");
    }

    #[test]
    fn schemes_params_protocols() {
        assert_eq!(r("sent bearer abc.def/ghi= ok"), "sent bearer [redacted] ok");
        assert_eq!(r("GET /ws?a=1&api_key=s3cr%20t&b=2 HTTP/1.1"), "GET /ws?a=1&api_key=[redacted]&b=2 HTTP/1.1");
        assert_eq!(r("/x?key=abc"), "/x?key=[redacted]");
        assert_eq!(r("monkey=1 donkey=2"), "monkey=1 donkey=2");
        assert_eq!(r("chat, openai-insecure-api-key.abc"), "chat, openai-insecure-api-key.[redacted]");
        assert_eq!(r("key sk-0123456789abcdefXYZ."), "key [redacted]");
    }

    #[test]
    fn bot_tokens_and_byte_arrays() {
        assert_eq!(
            r("url (https://api.telegram.org/bot4242:AAtest-SECRET/getMe)"),
            "url (https://api.telegram.org/bot[redacted]/getMe)"
        );
        let bare = "token 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1 here";
        assert_eq!(r(bare), "token [redacted] here");
        assert_eq!(r("at 12:30:45 and 10.0.0.1:8080"), "at 12:30:45 and 10.0.0.1:8080");
        assert_eq!(r("digest: [1, 2, 3, 4, 5, 6, 7, 255]"), "digest: [[redacted]]");
        assert_eq!(r("tried: [1, 2]"), "tried: [1, 2]");
        let chars = r"Chars(['E', '3', '\r', '\n', 'k', '\'', 'é', 'y', '2', '\u{1f}']) }";
        assert_eq!(r(chars), "Chars([[redacted]]) }");
        let cut = r"Chars(['s', 'e', 'c', 'r', 'e', 't', '-', 'k', 'e', 'y'";
        assert_eq!(r(cut), "Chars([[redacted]");
        assert_eq!(r("['a', 'b']"), "['a', 'b']");
    }

    #[test]
    fn known_values_in_every_form() {
        let secret = "provider-known-value-ÿ";
        remember(secret);
        let hex = hex::encode(crate::keys::sha256(secret.as_bytes()));
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        for form in [secret.to_string(), hex.clone(), hex.to_uppercase(), b64] {
            let out = r(&format!("é {form} é"));
            assert_eq!(out, "é [redacted] é", "{form}");
        }
        remember("short");
        assert_eq!(r("a short word"), "a short word");
    }

    #[test]
    fn non_ascii_text_survives() {
        assert_eq!(r("ünïcode Authorization: Bearer ключ"), "ünïcode Authorization: [redacted]");
    }
}
