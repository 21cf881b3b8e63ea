//! Which model a request is for, decided on exactly what will be forwarded: the body is read
//! (bounded by `server.max_body`) and scanned whatever its `Content-Type` says
//! ([`crate::request_body`]); a `model` in the query is checked too; a request that names no
//! model takes the route's or provider's `default_model`, which is then written into what
//! is forwarded; and a key that may not use every model must end up with a model it may use.

use super::fields::Present;
use crate::error::GatewayError;
use crate::keys::KeyEntry;
use crate::request_body::{self, Scan, ScanError};
use bytes::Bytes;
use pingora::prelude::*;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// How the body was read, which says how a default model is written into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// No body, or one forwarded as it came (not JSON, on a route that does not need it).
    Opaque,
    Json,
    Multipart(String),
}

/// Whether the body may be read: every request that may carry one, except upgrades (their
/// bytes after the header are the tunnel's). (MCP bodies, JSON-RPC for the backend only, and
/// uploads that need no model are left to the caller.)
pub fn reads_body(session: &mut Session, present: &Present) -> bool {
    if super::fields::is_upgrade_req(session, present) {
        return false;
    }
    let method = &session.req_header().method;
    matches!(*method, http::Method::POST | http::Method::PUT | http::Method::PATCH) || !session.is_body_empty()
}

/// An upload (`multipart/*`, an octet stream): on a route that does not need the model, for a
/// key that may use every model, it streams through unread (and unbounded by `server.max_body`).
pub fn is_upload(req: &RequestHeader) -> bool {
    let starts = |ct: &[u8], p: &[u8]| ct.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    let ct = req.headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
    ct.is_some_and(|ct| starts(ct, b"multipart/") || starts(ct, b"application/octet-stream"))
}

/// Reads the whole body into one buffer, refusing more than `max` bytes (by Content-Length
/// before reading). The usual single read is kept as it came, without a copy.
pub async fn read_body(session: &mut Session, max: u64, present: &Present) -> Result<Result<Bytes, GatewayError>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(Err(GatewayError::PayloadTooLarge(max)));
    }
    let expects_continue = present.expect
        && session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    // Pingora replays the body to the upstream from this buffer (on every attempt): it must
    // hold every body the gateway accepts (vendor/patches/0002, Pingora's default is 64 KiB).
    session.enable_retry_buffering_with_limit(usize::try_from(max).unwrap_or(usize::MAX));
    let (mut first, mut joined) = (None::<Bytes>, Vec::new());
    let mut total: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len() as u64;
        if total > max {
            return Ok(Err(GatewayError::PayloadTooLarge(max)));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            held => {
                joined.extend_from_slice(held.as_deref().unwrap_or_default());
                joined.extend_from_slice(&chunk);
            }
        }
        // The framing's end reached (a `Content-Length` body that came with its header, the
        // usual case): no further read, which would only answer `None`.
        if session.is_body_done() {
            break;
        }
    }
    Ok(Ok(first.unwrap_or_else(|| Bytes::from(joined))))
}

/// Scans a read body by its form. `needs`: the route or the key needs the model, so a body
/// that cannot be read is refused rather than forwarded.
pub fn scan_body(
    req: &RequestHeader,
    body: &[u8],
    needs: bool,
    present: &Present,
) -> Result<(Scan, Form), GatewayError> {
    let ct = single(req, http::header::CONTENT_TYPE)?.map_or(&b""[..], |v| v.as_bytes());
    // Compared without case (as the lower-cased form would be); lower-cased only for a refusal.
    let media = media_of(ct);
    let coding = if present.content_encoding { single(req, http::header::CONTENT_ENCODING)? } else { None };
    let encoded = coding.is_some_and(|e| !trim(&text(e.as_bytes())).eq_ignore_ascii_case("identity"));
    if encoded && !body.is_empty() {
        return if needs {
            Err(GatewayError::UnsupportedMediaType(
                "compressed request bodies (Content-Encoding) are not accepted".into(),
            ))
        } else {
            Ok((Scan::default(), Form::Opaque))
        };
    }
    if media.eq_ignore_ascii_case(b"multipart/form-data") {
        let ct = text(ct);
        let read = request_body::multipart_boundary(&ct)
            .and_then(|b| request_body::multipart_model(body, &ct).map(|model| (model, b)));
        return match read {
            Ok((model, boundary)) => Ok((Scan { model, ..Scan::default() }, Form::Multipart(boundary))),
            Err(e) if needs => Err(bad(e)),
            // An upload on a route that needs no model, by a key that may use every model.
            Err(_) => Ok((Scan::default(), Form::Opaque)),
        };
    }
    match request_body::scan(body) {
        Ok(scan) if body.is_empty() => Ok((scan, Form::Opaque)),
        Ok(scan) => Ok((scan, Form::Json)),
        Err(ScanError::NotJson) if declared_json(&media) => {
            Err(GatewayError::InvalidJson("the body is not a JSON object".into()))
        }
        Err(ScanError::NotJson) if needs => Err(GatewayError::UnsupportedMediaType(format!(
            "the body must be a JSON object (or multipart/form-data) to learn its model; got {}",
            if media.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("{:?}", bounded(&String::from_utf8_lossy(&media).to_ascii_lowercase()))
            }
        ))),
        Err(ScanError::NotJson) => Ok((Scan::default(), Form::Opaque)),
        Err(e) => Err(bad(e)),
    }
}

/// A field value as text: `String::from_utf8_lossy`, without its chunk walk for the usual
/// UTF-8 (ASCII) value.
fn text(v: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
    }
}

/// [`media_type`] of the value as text, read on its bytes when the type is ASCII (then its
/// text is the same bytes): no UTF-8 validation of the value on every request.
fn media_of(ct: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let end = ct.iter().position(|&c| c == b';').unwrap_or(ct.len());
    let ws = |c: &u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let head = &ct[..end];
    let start = head.iter().position(|c| !ws(c)).unwrap_or(head.len());
    let stop = head.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
    match head.get(start..stop) {
        Some(m) if m.is_ascii() => std::borrow::Cow::Borrowed(m),
        _ => std::borrow::Cow::Owned(media_type(&text(ct)).as_bytes().to_vec()),
    }
}

/// The media type of a `Content-Type` value: what precedes the first `;`, trimmed
/// (`ct.split(';').next().unwrap_or("").trim()`, found on bytes).
fn media_type(ct: &str) -> &str {
    let end = ct.bytes().position(|c| c == b';').unwrap_or(ct.len());
    trim(ct.get(..end).unwrap_or(ct))
}

/// `str::trim`: the ASCII white space it removes stripped on bytes; the rest of its work
/// (Unicode white space) only when a non-ASCII character is left at an end.
fn trim(s: &str) -> &str {
    // `char::is_whitespace` below U+0080.
    let ws = |c: u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let b = s.as_bytes();
    let start = b.iter().position(|&c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !ws(c)).map_or(start, |e| e + 1);
    // Cut next to ASCII bytes (or at the ends): character boundaries.
    let t = s.get(start..end).unwrap_or_default();
    match (t.as_bytes().first(), t.as_bytes().last()) {
        (Some(&a), Some(&z)) if !a.is_ascii() || !z.is_ascii() => t.trim(),
        _ => t,
    }
}

/// `media` as its lower-cased form would compare: `application/json` or `…+json`.
fn declared_json(m: &[u8]) -> bool {
    m.eq_ignore_ascii_case(b"application/json") || m.len() >= 5 && m[m.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// The value of a header the request may give at most once (two are refused: which one the
/// upstream would read is not known).
fn single(req: &RequestHeader, name: http::header::HeaderName) -> Result<Option<&http::HeaderValue>, GatewayError> {
    let mut all = req.headers.get_all(&name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(GatewayError::BadRequest(format!("the request has more than one {name} header")));
    }
    Ok(first)
}

fn bounded(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

fn bad(e: ScanError) -> GatewayError {
    match e {
        ScanError::Invalid(m) => GatewayError::InvalidJson(m),
        e => GatewayError::BadRequest(e.to_string()),
    }
}

/// The `model` query parameter (decoded as the upstream would), if any; two are refused.
pub fn query_model(req: &RequestHeader) -> Result<Option<String>, GatewayError> {
    let Some(q) = req.uri.query() else { return Ok(None) };
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k.eq_ignore_ascii_case("model") {
            if found.is_some() || k != "model" {
                return Err(GatewayError::BadRequest("the query names the model more than once or oddly".into()));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found.filter(|m| !m.is_empty()))
}

/// What the request names as its model, from every place an upstream reads one; places
/// that disagree are refused.
pub fn named(places: &[Option<&str>]) -> Result<Option<String>, GatewayError> {
    let mut model: Option<&str> = None;
    for m in places.iter().flatten() {
        match model {
            Some(prev) if prev != *m => {
                return Err(GatewayError::BadRequest(
                    "the request names two different models (body, query or path)".into(),
                ))
            }
            _ => model = Some(m),
        }
    }
    Ok(model.map(str::to_string))
}

/// The model of a request that named none: the default when the key may use it; none when
/// the key may use every model; else 400 `model_required`.
pub fn fallback(key: &KeyEntry, default: Option<&str>) -> Result<Option<String>, GatewayError> {
    match default {
        Some(d) if key.models.allows(d) => Ok(Some(d.to_string())),
        _ if key.models.allows_all() => Ok(None),
        Some(_) => Err(GatewayError::ModelRequired(
            "this request must name its model (\"model\"): the default model is not one this API key may use".into(),
        )),
        None => Err(GatewayError::ModelRequired(
            "this request must name its model (\"model\"): this API key may only use some models".into(),
        )),
    }
}

/// The body with `model` set (a default the request did not name) and, for streams,
/// `stream_options.include_usage`; `None` when nothing changes. JSON bodies are spliced at the
/// places the scan recorded (see [`super::rewrite::json_body`]).
pub fn rewritten(
    body: &Bytes,
    form: &Form,
    scan: &Scan,
    set_model: Option<&str>,
    include_usage: bool,
) -> Option<Bytes> {
    match form {
        Form::Json => super::rewrite::json_body(body, &scan.spans, set_model, include_usage),
        Form::Multipart(boundary) => {
            set_model.and_then(|m| super::rewrite::multipart_with_model(std::slice::from_ref(body), boundary, m))
        }
        Form::Opaque => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{media_of, media_type, text, trim, Form, Present};
    use crate::error::GatewayError;
    use crate::request_body::Scan;
    use pingora_http::RequestHeader;

    /// As admission calls it: with the fields the request has.
    fn scan_body(r: &RequestHeader, body: &[u8], needs: bool) -> Result<(Scan, Form), GatewayError> {
        super::scan_body(r, body, needs, &Present::read(r))
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn media_types_are_read_in_any_case_and_given_once() {
        let json = br#"{"model":"m"}"#;
        // A JSON media type in any case, with parameters: a body that is not JSON is invalid JSON.
        for ct in
            ["application/json", "Application/JSON; charset=utf-8", "application/VND.api+JSON", " application/json "]
        {
            let e = scan_body(&req(&[("content-type", ct)]), b"not json", true).err();
            assert!(matches!(e, Some(GatewayError::InvalidJson(_))), "{ct}: {e:?}");
            let (scan, form) = scan_body(&req(&[("content-type", ct)]), json, true).unwrap();
            assert_eq!((scan.model.as_deref(), form), (Some("m"), Form::Json), "{ct}");
        }
        // Another media type and a body the gateway cannot read: refused, the type named lower-cased.
        match scan_body(&req(&[("content-type", "Text/PLAIN")]), b"model=m", true) {
            Err(GatewayError::UnsupportedMediaType(m)) => assert!(m.contains("\"text/plain\""), "{m}"),
            other => panic!("{other:?}"),
        }
        // Multipart in any case is read as a form.
        let form = b"--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nm\r\n--b--\r\n";
        let (scan, f) = scan_body(&req(&[("content-type", "MULTIPART/Form-Data; boundary=b")]), form, true).unwrap();
        assert_eq!((scan.model.as_deref(), f), (Some("m"), Form::Multipart("b".into())));
        // Two Content-Type or two Content-Encoding fields: which one the upstream reads is unknown.
        for name in ["content-type", "content-encoding"] {
            let e = scan_body(&req(&[(name, "application/json"), (name, "identity")]), json, true).err();
            assert!(matches!(e, Some(GatewayError::BadRequest(ref m)) if m.contains("more than one")), "{name}: {e:?}");
        }
        // `identity` in any case and spacing is no coding; any other is refused when the model is needed.
        assert!(scan_body(&req(&[("content-encoding", " IDENTITY ")]), json, true).is_ok());
        let e = scan_body(&req(&[("content-encoding", "gzip")]), json, true).err();
        assert!(matches!(e, Some(GatewayError::UnsupportedMediaType(_))), "{e:?}");
    }

    /// The byte-level reading gives what the `str` one gives, on adversarial values too.
    #[test]
    fn media_type_and_trim_agree_with_str() {
        let parts: [&[u8]; 14] = [
            b"",
            b" ",
            b"\t",
            b"\x0b",
            b"\x0c",
            b"\r\n",
            b";",
            b"a",
            b"application/json",
            b"\xc2\xa0",
            b"\xe3\x80\x80",
            b"\xff",
            b"\xe9",
            b"\xc2",
        ];
        let mut values = Vec::new();
        for a in parts {
            for b in parts {
                for c in parts {
                    values.push([a, b, c].concat());
                }
            }
        }
        for v in &values {
            let lossy = String::from_utf8_lossy(v);
            assert_eq!(text(v), lossy);
            assert_eq!(media_type(&lossy), lossy.split(';').next().unwrap_or("").trim(), "{v:?}");
            assert_eq!(trim(&lossy), lossy.trim(), "{v:?}");
            assert_eq!(*media_of(v), *media_type(&lossy).as_bytes(), "{v:?}");
        }
    }
}
