//! Finds the client's credential in the request and checks it against the key table.
//!
//! `Authorization: Bearer <key>` or `x-api-key: <key>` on any request. WebSocket upgrades,
//! whose browser clients cannot set headers, may instead carry the key in the `api_key` query
//! parameter or as a `Sec-WebSocket-Protocol` entry `openai-insecure-api-key.<key>` (the form
//! OpenAI's browser clients use) or `api_key.<key>`; both are removed before forwarding.

use crate::keys::{AuthError, KeyEntry, KeyTable};
use crate::secret::Secret;
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

pub const QUERY_PARAM: &str = "api_key";
pub const PROTOCOL_PREFIXES: [&str; 2] = ["openai-insecure-api-key.", "api_key."];

pub fn credential(req: &RequestHeader) -> Option<Secret> {
    presented(req).map(|key| Secret::new(key.into_owned()))
}

/// The credential as presented, borrowed from the request unless it had to be decoded (only
/// [`authenticate`] sees it: it is checked and dropped, never printed).
fn presented(req: &RequestHeader) -> Option<Cow<'_, str>> {
    if let Some(v) = req.headers.get(http::header::AUTHORIZATION) {
        return bearer_key(v.to_str().ok()?).map(Cow::Borrowed);
    }
    if let Some(v) = req.headers.get("x-api-key") {
        let v = trim_visible(v.to_str().ok()?);
        return (!v.is_empty()).then_some(Cow::Borrowed(v));
    }
    if is_websocket(req) {
        return websocket_credential(req);
    }
    None
}

/// The key of an `Authorization` value (already through `HeaderValue::to_str`): trimmed, the
/// scheme up to the first space `bearer` in any case, the rest trimmed and not empty. What
/// `str::trim` and `split_once(' ')` would find, on bytes.
fn bearer_key(v: &str) -> Option<&str> {
    let v = trim_visible(v);
    let (scheme, rest) = (v.as_bytes().get(..6)?, v.get(6..)?);
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(' ') {
        return None;
    }
    let key = trim_visible(rest);
    (!key.is_empty()).then_some(key)
}

/// `str::trim` for a string that passed `HeaderValue::to_str` (visible ASCII, space and tab):
/// there the only whitespace is space and tab.
fn trim_visible(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| c != b' ' && c != b'\t').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ' && c != b'\t').map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// `Upgrade: websocket`.
pub fn is_websocket(req: &RequestHeader) -> bool {
    req.headers.get(http::header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn websocket_credential(req: &RequestHeader) -> Option<Cow<'_, str>> {
    if let Some(q) = req.uri.query() {
        for pair in q.split('&') {
            if let Some(v) = query_key(pair) {
                if !v.is_empty() {
                    return Some(Cow::Owned(v));
                }
            }
        }
    }
    for value in req.headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(v) = value.to_str() else { continue };
        for entry in v.split(',').map(str::trim) {
            if let Some(key) = protocol_key(entry) {
                if !key.is_empty() {
                    return Some(Cow::Borrowed(key));
                }
            }
        }
    }
    None
}

/// The value of one raw query pair (`a=b`) when its name, decoded as a form (`%5F`, `+`),
/// is `api_key`. The one decoder both finds the credential and decides what is scrubbed, so
/// no spelling can authenticate and still be forwarded.
fn query_key(pair: &str) -> Option<String> {
    let (name, value) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
    (name == QUERY_PARAM).then(|| value.into_owned())
}

/// A `Sec-WebSocket-Protocol` entry carrying a key (prefix in any case): the key.
fn protocol_key(entry: &str) -> Option<&str> {
    PROTOCOL_PREFIXES.iter().find_map(|p| {
        let head = entry.get(..p.len())?;
        head.eq_ignore_ascii_case(p).then(|| &entry[p.len()..])
    })
}

/// The query without `api_key` in any spelling (other parameters keep their order and
/// encoding).
pub fn strip_query_key(q: &str) -> String {
    q.split('&').filter(|p| query_key(p).is_none()).collect::<Vec<_>>().join("&")
}

/// Removes `api_key` from the query of a WebSocket upgrade, in place, so neither the upstream
/// nor a log line that quotes the request target (Pingora's own error lines do) sees it.
pub fn scrub_query_key(req: &mut RequestHeader) {
    let Some(q) = req.uri.query() else { return };
    if !is_websocket(req) {
        return;
    }
    let kept = strip_query_key(q);
    let target = if kept.is_empty() { req.uri.path().to_string() } else { format!("{}?{kept}", req.uri.path()) };
    if let Ok(uri) = target.parse::<http::Uri>() {
        req.set_uri(uri);
    }
}

/// `Sec-WebSocket-Protocol` without key entries; `None` when nothing else was offered.
pub fn strip_protocol_key(req: &RequestHeader) -> Option<Option<String>> {
    let all = req.headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL);
    // The common case: no such header, nothing to collect.
    all.iter().next()?;
    let values: Vec<&str> = all.iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return None;
    }
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && protocol_key(e).is_none())
        .collect();
    Some((!kept.is_empty()).then(|| kept.join(", ")))
}

pub fn authenticate(req: &RequestHeader, keys: &KeyTable) -> Result<Arc<KeyEntry>, AuthError> {
    let presented = presented(req).ok_or(AuthError::Missing)?;
    keys.check_with(presented.as_bytes(), SystemTime::now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    /// What the header forms gave before they were read on bytes.
    fn by_str(req: &RequestHeader) -> Option<String> {
        if let Some(v) = req.headers.get(http::header::AUTHORIZATION) {
            let v = v.to_str().ok()?.trim();
            let (scheme, rest) = v.split_once(' ')?;
            let key = rest.trim();
            return (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_string());
        }
        let v = req.headers.get("x-api-key")?.to_str().ok()?.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    #[test]
    fn header_forms_read_on_bytes_as_on_str() {
        let values: Vec<&[u8]> = vec![
            b"Bearer k",
            b"bearer k",
            b"BEARER  k  ",
            b"\tBearer k\t",
            b"  Bearer \t k \t ",
            b"Bearer\tk",
            b"Bearer",
            b"Bearer ",
            b"Bearer  \t ",
            b"Bearerk",
            b"Bearer k k2",
            b"Bearer sk-\x80\xff",
            b"Basic k",
            b"Bear k",
            b"",
            b" ",
            b"\t",
            b"k",
            b"b\xc3\xa9arer k",
            b"Bearer \"k,\"",
        ];
        for v in &values {
            for name in ["authorization", "x-api-key"] {
                let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
                r.append_header(name, http::HeaderValue::from_bytes(v).unwrap()).unwrap();
                assert_eq!(presented(&r).map(Cow::into_owned), by_str(&r), "{name}: {v:?}");
            }
        }
    }

    #[test]
    fn websocket_forms_only_on_upgrades() {
        let ws = [("upgrade", "websocket"), ("connection", "upgrade")];
        let r = req("/ws?a=1&api_key=k1", &ws);
        assert_eq!(credential(&r).unwrap().expose(), "k1");
        assert!(credential(&req("/ws?api_key=k1", &[])).is_none(), "query keys only on upgrades");
        let r = req("/ws", &[ws[0], ws[1], ("sec-websocket-protocol", "chat, openai-insecure-api-key.k2")]);
        assert_eq!(credential(&r).unwrap().expose(), "k2");
        assert_eq!(strip_protocol_key(&r), Some(Some("chat".to_string())));
        let r = req("/ws", &[("sec-websocket-protocol", "api_key.k3")]);
        assert_eq!(strip_protocol_key(&r), Some(None));
        assert_eq!(strip_query_key("a=1&api_key=k&b=%20"), "a=1&b=%20");
        assert_eq!(strip_query_key("api_key=k"), "");
        assert_eq!(strip_query_key("a=1&api%5Fkey=k&api%5fkey=k2&b=2"), "a=1&b=2");
        let r = req("/ws?api%5Fkey=k4", &ws);
        assert_eq!(credential(&r).unwrap().expose(), "k4");
        let r = req("/ws", &[ws[0], ws[1], ("sec-websocket-protocol", "chat, OpenAI-Insecure-API-Key.k5")]);
        assert_eq!(credential(&r).unwrap().expose(), "k5");
        assert_eq!(strip_protocol_key(&r), Some(Some("chat".to_string())));
        let mut r = req("/ws?api_key=k1&x=2", &ws);
        scrub_query_key(&mut r);
        assert_eq!(r.raw_path(), b"/ws?x=2");
    }
}
