//! The request header as a backend gets it, on every path. Two steps, in this order:
//!
//! 1. **HTTP hygiene**: what Pingora's proxy loop does before `upstream_request_filter`
//!    (`sanitize_h1_upstream_request` in vendor/pingora-proxy/src/proxy_common.rs, under
//!    `HttpUpstreamRequestPolicy::standard()` from vendor/pingora-core/src/upstreams/peer.rs):
//!    HTTP/1.1, the hop-by-hop fields and those `Connection` names removed, a WebSocket upgrade
//!    re-announced as `Connection: Upgrade` + `Upgrade: websocket`. Pingora's functions are
//!    crate-private, so the relays ([`h1_request`]) apply [`sanitize`] here; the proxy loop
//!    and the subrequest pipe get Pingora's own.
//! 2. **The gateway's rewrites** ([`rewrite`]): provider path and Host, the provider's key in
//!    place of the client's credentials, request id and forwarding headers, the rewritten
//!    body's length, `Accept-Encoding: identity` where the gateway reads the answer, MCP
//!    session and Origin.
//!
//! Then **framing**: a request with a body but neither `Content-Length` nor
//! `Transfer-Encoding` (an HTTP/2 request without length, or a chunked one whose
//! `Transfer-Encoding` step 1 removed) goes chunked, as Pingora's
//! `finalize_h1_upstream_request_framing` does after the filter.

use crate::proxy::ctx::Routed;
use crate::proxy::header_names as names;
use crate::proxy::{credentials, long_lived, rewrite};
use http::header::{self, HeaderName};
use pingora::prelude::*;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Fields that describe one hop, never the request (RFC 9110 §7.6.1, plus the legacy
/// `Keep-Alive` and `Proxy-Connection`, and `HTTP2-Settings` of an h2c upgrade offer).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Fields a `Connection` header may not name away: the target and the forwarding facts.
const PROTECTED: [&str; 4] = ["host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];

/// At most this many `Connection` names (Pingora's bound too).
const MAX_NOMINATIONS: usize = 9;

/// The client's key in OpenAI-compatible clients' other header; checked once, not parsed per request.
static API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The client's request as an HTTP/1.1 request to the backend, for the paths outside
/// Pingora's proxy loop (heartbeat relay, WebSocket tunnel): the same hygiene and framing as
/// Pingora's own path, then the gateway's rewrites.
pub fn h1_request(session: &mut Session, routed: &Routed) -> Result<RequestHeader> {
    let has_body = !session.is_body_empty();
    let mut req = session.req_header().clone();
    // Decided once at admission (`long_lived::admit`: other upgrade offers already declined).
    let websocket = routed.streams.upgrade;
    req.set_version(http::Version::HTTP_11);
    sanitize(&mut req, websocket)?;
    rewrite(&mut req, routed)?;
    frame(&mut req, has_body)?;
    Ok(req)
}

/// Step 1 for the relays: see the module comment. A `Connection` header that names a
/// protected field, or is not a list of tokens, is the client's error (400), as on Pingora's
/// path.
pub fn sanitize(req: &mut RequestHeader, websocket: bool) -> Result<()> {
    for name in nominated(req)? {
        req.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    Ok(())
}

/// The fields the client's `Connection` header names.
fn nominated(req: &RequestHeader) -> Result<Vec<HeaderName>> {
    let refuse = |why: &'static str| Error::e_explain(ErrorType::InvalidHTTPHeader, why).map_err(|e| e.into_down());
    let mut names = Vec::new();
    let tokens = req.headers.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    for token in tokens.map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
        if names.len() == MAX_NOMINATIONS {
            return refuse("too many Connection header nominations");
        }
        // `HeaderName` accepts exactly the tchar set, lowercased.
        let Ok(name) = HeaderName::from_bytes(token) else {
            return refuse("invalid token nominated by the Connection header");
        };
        if PROTECTED.contains(&name.as_str()) {
            return refuse("protected header cannot be nominated by the Connection header");
        }
        names.push(name);
    }
    Ok(names)
}

/// Step 2, on every path (Pingora's `upstream_request_filter` calls it too).
pub fn rewrite(req: &mut RequestHeader, routed: &Routed) -> Result<()> {
    if !targets(req, &routed.upstream_path) {
        let uri: http::Uri = routed
            .upstream_path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "upstream path is not a valid URI"))?;
        req.set_uri(uri);
    }
    // Room for the fields added to the map below (credentials, Host, length), at once: the map
    // is sized to the client's headers.
    req.reserve_headers(3)?;
    // The fields below that are absent are neither removed nor looked up (both no-ops then):
    // nothing here adds or removes one before it is used.
    let sent = Sent::read(req);
    if sent.api_key {
        req.remove_header(&API_KEY);
    }
    let offered = if sent.protocol { credentials::strip_protocol_key(req) } else { None };
    if let Some(kept) = offered {
        req.remove_header(&header::SEC_WEBSOCKET_PROTOCOL);
        if let Some(v) = kept {
            req.insert_header(header::SEC_WEBSOCKET_PROTOCOL, v)?;
        }
    }
    if sent.expect {
        // The body was already read by the gateway (and 100 Continue answered if asked).
        req.remove_header(&header::EXPECT);
    }
    // Header values built once per provider when the config compiles.
    let built = &routed.provider.headers;
    // The client's `Authorization` (its gateway key) never goes on: replaced by the provider's
    // (an insert replaces every field of the name), else removed.
    match (&routed.provider.api_key, &built.authorization) {
        (Some(_), Some(v)) => req.insert_header(&names::AUTHORIZATION, v.clone())?,
        (Some(key), None) => req.insert_header(&names::AUTHORIZATION, format!("Bearer {}", key.expose()))?,
        (None, _) => {
            req.remove_header(&header::AUTHORIZATION);
        }
    }
    match &built.host {
        Some(v) => names::insert_host(req, v.clone())?,
        None => names::insert_host(req, routed.provider.host_header.as_str())?,
    }
    own_fields(req, routed, &sent)?;
    if let Some(len) = routed.body_len {
        rewrite::set_body_length(req, len)?;
    }
    long_lived::upstream_request(req, routed)
}

/// The gateway's own fields: request id, forwarding facts, and `Accept-Encoding: identity`
/// where the gateway reads the answer. They go after the map's as encoded lines, appended with
/// one call (vendor/patches/0023 and 0024: no map insert, no value built, no call per field).
/// Each replaces the client's fields of its name, removed first where [`Sent::read`] found one.
/// (`Authorization` stays a map insert: its value is marked sensitive, which HTTP/2 keeps out of
/// its header compression tables.)
fn own_fields(req: &mut RequestHeader, routed: &Routed, sent: &Sent) -> Result<()> {
    if sent.request_id {
        req.remove_header(names::REQUEST_ID.name());
    }
    // The client's chain (its first field, when text), then the client's address.
    let prev = if sent.forwarded_for && routed.client_ip.is_some() {
        req.remove_header(names::FORWARDED_FOR.name())
    } else {
        None
    };
    let chain = match (prev.as_ref().and_then(|v| v.to_str().ok()), &routed.client_ip) {
        (Some(prev), Some(ip)) if !prev.is_empty() => Some(format!("{prev}, {ip}")),
        _ => None,
    };
    if sent.forwarded_proto {
        req.remove_header(names::FORWARDED_PROTO.name());
    }
    let identity = observed(routed);
    if identity {
        // The gateway reads these answers (usage, model list, MCP endpoint): plain bytes only.
        if sent.accept_encoding {
            req.remove_header(names::ACCEPT_ENCODING.name());
        }
        if sent.te {
            req.remove_header(&header::TE);
        }
    }
    // One allocation for the lines: an id, an address chain, a scheme, an encoding.
    req.append_encoded_headers(192, |fields| {
        fields.field(&names::REQUEST_ID, routed.request_id.as_bytes());
        if let Some(ip) = &routed.client_ip {
            fields.field(&names::FORWARDED_FOR, chain.as_deref().unwrap_or(ip).as_bytes());
        }
        fields.field(&names::FORWARDED_PROTO, routed.client_proto.as_bytes());
        if identity {
            fields.field(&names::ACCEPT_ENCODING, b"identity");
        }
    })
}

/// Which of the fields [`rewrite`] removes or reads the client's request has, found in one
/// pass over its names: most are absent, and a lookup of each hashes the name and probes the
/// map.
#[derive(Debug, Default, PartialEq)]
struct Sent {
    api_key: bool,
    protocol: bool,
    expect: bool,
    forwarded_for: bool,
    te: bool,
    request_id: bool,
    forwarded_proto: bool,
    accept_encoding: bool,
}

impl Sent {
    fn read(req: &RequestHeader) -> Self {
        let mut sent = Sent::default();
        for name in req.headers.keys() {
            if *name == API_KEY {
                sent.api_key = true;
            } else if *name == header::SEC_WEBSOCKET_PROTOCOL {
                sent.protocol = true;
            } else if *name == header::EXPECT {
                sent.expect = true;
            } else if name == names::FORWARDED_FOR.name() {
                sent.forwarded_for = true;
            } else if *name == header::TE {
                sent.te = true;
            } else if name == names::REQUEST_ID.name() {
                sent.request_id = true;
            } else if name == names::FORWARDED_PROTO.name() {
                sent.forwarded_proto = true;
            } else if *name == header::ACCEPT_ENCODING {
                sent.accept_encoding = true;
            }
        }
        sent
    }
}

/// Whether `req` already targets `path` as `set_uri(path.parse())` would make it: an
/// origin-form URI (no scheme, no authority) whose path and query are `path`, written as
/// `path` (its target bytes). The common case (the provider's path is the client's) then
/// neither parses nor copies the path again. `/` and `*` are left to `set_uri`: an empty
/// target's URI reads as `/` too, yet holds other bytes.
fn targets(req: &RequestHeader, path: &str) -> bool {
    let uri = &req.uri;
    path.len() > 1
        && uri.scheme().is_none()
        && uri.authority().is_none()
        && uri.path_and_query().is_some_and(|pq| pq.as_str() == path)
        && req.raw_path() == path.as_bytes()
}

/// A body without a length goes chunked; see the module comment.
pub fn frame(req: &mut RequestHeader, has_body: bool) -> Result<()> {
    let framed =
        req.headers.contains_key(header::CONTENT_LENGTH) || req.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !framed {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Writes one piece of a request body to a relay's backend connection. An empty piece (an
/// HTTP/2 DATA frame that only ends the stream, for one) is skipped: Pingora's chunked writer
/// would write it as the last chunk, `0\r\n\r\n` (`do_write_chunked_body` in
/// vendor/pingora-core/src/protocols/http/v1/body.rs), ending the body early, and the backend
/// would read the rest as a second request.
pub async fn write_body(up: &mut HttpSession, piece: &[u8]) -> Result<()> {
    if !piece.is_empty() {
        up.write_body(piece).await.map_err(|e| e.into_up())?;
    }
    Ok(())
}

/// Whether the gateway reads this request's answer: every request except a WebSocket upgrade
/// (tunnels carry bytes the gateway does not look into).
pub fn observed(routed: &Routed) -> bool {
    !routed.streams.upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_fields_and_connection_names_are_removed() {
        let mut r = req(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        sanitize(&mut r, false).unwrap();
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn websocket_upgrades_are_re_announced() {
        let mut r = req(&[("connection", "Upgrade, keep-alive"), ("upgrade", "WebSocket"), ("sec-websocket-key", "k")]);
        sanitize(&mut r, true).unwrap();
        assert_eq!(r.headers["connection"], "Upgrade");
        assert_eq!(r.headers["upgrade"], "websocket");
        assert_eq!(r.headers["sec-websocket-key"], "k");
    }

    #[test]
    fn protected_or_malformed_nominations_are_refused() {
        for bad in ["host", "X-Forwarded-For", "\"x-a\"", "a b", "1,2,3,4,5,6,7,8,9,10"] {
            let mut r = req(&[("connection", bad)]);
            let e = sanitize(&mut r, false).unwrap_err();
            assert_eq!(e.esource(), &ErrorSource::Downstream, "{bad}");
        }
    }

    #[test]
    fn a_target_already_right_is_kept_as_set_uri_would_set_it() {
        let targets_ = [
            "/v1/chat/completions",
            "/v1/chat/completions?a=1",
            "/v1/chat/completions?",
            "/v1/chat/completions#f",
            "/",
            "",
            "*",
            "/a%20b",
            "/a b",
            "/a{b}",
            "//x/y",
            "http://h/v1/chat/completions",
            "http://h/v1/chat/completions?a=1",
            "https://h:1/",
            "h:443",
            "/v1/\u{ff}",
        ];
        let paths = ["/v1/chat/completions", "/v1/chat/completions?a=1", "/", "/a%20b", "//x/y", "/other", "*"];
        for t in targets_ {
            let Ok(base) = RequestHeader::build("POST", t.as_bytes(), None) else { continue };
            for p in paths {
                let Ok(uri) = p.parse::<http::Uri>() else { continue };
                let mut old = base.clone();
                old.set_uri(uri);
                if targets(&base, p) {
                    assert_eq!(base.uri, old.uri, "{t} {p}");
                    assert_eq!(base.raw_path(), old.raw_path(), "{t} {p}");
                    assert_eq!(base.raw_path_is_utf8(), old.raw_path_is_utf8(), "{t} {p}");
                }
            }
        }
        let same = RequestHeader::build("POST", b"/v1/chat/completions?a=1", None).unwrap();
        assert!(targets(&same, "/v1/chat/completions?a=1"));
        assert!(!targets(&same, "/v1/chat/completions"));
        let absolute = RequestHeader::build("POST", b"http://h/v1/x", None).unwrap();
        assert!(!targets(&absolute, "/v1/x"));
    }

    #[test]
    fn one_pass_finds_what_lookups_find() {
        let given = [
            "x-api-key",
            "X-Api-Key",
            "sec-websocket-protocol",
            "expect",
            "X-Forwarded-For",
            "x-request-id",
            "X-Forwarded-Proto",
            "Accept-Encoding",
            "x-forwarded-protocol",
            "te",
            "TE",
            "authorization",
            "host",
            "x-api-keys",
            "x-forwarded",
            "content-type",
            "x-stainless-lang",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut r = seed;
            let mut fields = Vec::new();
            for _ in 0..(r % 9) {
                r /= 9;
                fields.push((given[(r % given.len() as u64) as usize], "v"));
                r /= given.len() as u64;
            }
            let req = req(&fields);
            let lookups = Sent {
                api_key: req.headers.contains_key(&API_KEY),
                protocol: req.headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL),
                expect: req.headers.contains_key(header::EXPECT),
                forwarded_for: req.headers.contains_key(names::FORWARDED_FOR.name()),
                te: req.headers.contains_key(header::TE),
                request_id: req.headers.contains_key("x-request-id"),
                forwarded_proto: req.headers.contains_key("x-forwarded-proto"),
                accept_encoding: req.headers.contains_key(header::ACCEPT_ENCODING),
            };
            assert_eq!(Sent::read(&req), lookups, "{fields:?}");
        }
    }

    #[test]
    fn bodies_without_length_go_chunked() {
        let mut r = req(&[]);
        frame(&mut r, true).unwrap();
        assert_eq!(r.headers["transfer-encoding"], "chunked");
        let mut r = req(&[("content-length", "3")]);
        frame(&mut r, true).unwrap();
        assert!(!r.headers.contains_key("transfer-encoding"));
        let mut r = req(&[]);
        frame(&mut r, false).unwrap();
        assert!(r.headers.is_empty());
    }
}
