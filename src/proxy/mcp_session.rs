//! MCP requests on the way in and out: unseal the session id (streamable HTTP) or the legacy
//! `session_id` query value and pin the request to the backend named inside; seal the id a
//! backend mints on `initialize`; make `Origin` acceptable to servers with DNS-rebinding
//! protection (the gateway checks same-origin itself, then presents the backend's origin).
//!
//! A sealed id is good only for the API key that opened the session and only for
//! `mcp.session_ttl` after it was sealed; any other use gets the same 404 as a forged id (the
//! MCP transport's answer to an unknown session: the client initializes a new one), so a
//! stolen id neither works for another key nor tells that it exists.

use crate::fleet::Backend;
use crate::mcp::seal::Pinned;
use crate::proxy::ctx::Routed;
use crate::proxy::respond;
use pingora::prelude::*;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;

pub const SESSION_HEADER: &str = "mcp-session-id";
/// Query parameters the legacy transport uses for its session (Python SDK, TypeScript SDK).
const LEGACY_PARAMS: [&str; 2] = ["session_id", "sessionId"];

/// Unseals and pins; answers 404 (re-initialize) for an id that fails to unseal or names a
/// backend the provider no longer has, 403 for a cross-origin browser request.
pub async fn admit(session: &mut Session, routed: &mut Routed, request_id: &str) -> Result<Option<u16>> {
    let req = session.req_header();
    if !same_origin(req) {
        let body = error_body("Origin does not match the host of this gateway", "forbidden_origin");
        respond::json(session, 403, body, request_id, &[]).await?;
        return Ok(Some(403));
    }
    let sealed_header = req.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let legacy = legacy_param(req.uri.query());
    let sealed = match (&sealed_header, &legacy) {
        (Some(h), _) => Some(h.clone()),
        (None, Some((_, v))) => Some(v.clone()),
        (None, None) => None,
    };
    let Some(sealed) = sealed else { return Ok(None) };
    match unseal(routed, &sealed) {
        Some(pin) => {
            if sealed_header.is_none() {
                if let Some((name, _)) = legacy {
                    routed.upstream_path = replace_param(&routed.upstream_path, &name, &pin.token);
                }
            }
            routed.streams.pin = Some(pin);
            Ok(None)
        }
        None => {
            if let Some(m) = crate::observe::metrics::metrics() {
                m.mcp_unknown_sessions.inc();
            }
            let body = error_body("unknown or expired MCP session; initialize a new session", "session_not_found");
            respond::json(session, 404, body, request_id, &[]).await?;
            Ok(Some(404))
        }
    }
}

fn unseal(routed: &Routed, sealed: &str) -> Option<Pinned> {
    let sealer = routed.runtime.mcp.as_ref()?;
    let pin = sealer.open(sealed).ok()?;
    if pin.provider != *routed.provider.name || pin.key != *routed.key.name {
        return None;
    }
    find_backend(routed, pin.backend)?;
    Some(pin)
}

/// The provider's backend at `addr`, with its index.
pub fn find_backend(routed: &Routed, addr: SocketAddr) -> Option<(usize, Arc<Backend>)> {
    routed.provider.backends.iter().enumerate().find(|(_, b)| b.addr == addr).map(|(i, b)| (i, b.clone()))
}

/// Puts the backend's own session id back, and the backend's origin in place of the client's.
pub fn rewrite_request(req: &mut RequestHeader, routed: &Routed) -> Result<()> {
    if let Some(pin) = &routed.streams.pin {
        if req.headers.contains_key(SESSION_HEADER) {
            req.insert_header(SESSION_HEADER, pin.token.as_str())?;
        }
    }
    if req.headers.contains_key(http::header::ORIGIN) {
        let scheme = if routed.provider.tls.is_some() { "https" } else { "http" };
        req.insert_header(http::header::ORIGIN, format!("{scheme}://{}", routed.provider.host_header))?;
    }
    Ok(())
}

/// Seals a session id the backend minted, so later requests find their way back.
pub fn rewrite_response(resp: &mut ResponseHeader, routed: &Routed, backend: Option<&Arc<Backend>>) -> Result<()> {
    let Some(minted) = resp.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return Ok(());
    };
    let (Some(sealer), Some(b)) = (routed.runtime.mcp.as_ref(), backend) else { return Ok(()) };
    let pin = Pinned {
        provider: routed.provider.name.to_string(),
        backend: b.addr,
        token: minted,
        key: routed.key.name.to_string(),
    };
    let sealed = sealer.seal(&pin);
    resp.insert_header(SESSION_HEADER, sealed)?;
    if routed.streams.pin.is_none() {
        // A new session (`initialize`): counted on its backend until a DELETE ends it.
        opened(b);
    }
    Ok(())
}

/// A session on `b` began (an `initialize` answered, a legacy stream opened).
pub fn opened(b: &Backend) {
    b.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A session on `b` ended (a DELETE answered, a legacy stream closed).
pub fn closed(b: &Backend) {
    let _ = b
        .sessions
        .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| n.checked_sub(1));
}

/// A browser's `Origin` must name the host the client addressed; requests without one
/// (SDK clients) pass. The host addressed is `Host`, or over HTTP/2 (which has no `Host`
/// unless the client adds one) the `:authority`; when a request names both, `Origin` must
/// match both (an absolute-form HTTP/1.1 target could otherwise name another host than
/// `Host`). A request with `Origin` that names no host at all is refused.
fn same_origin(req: &RequestHeader) -> bool {
    let Some(origin) = req.headers.get(http::header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let host = match req.headers.get(http::header::HOST).map(|v| v.to_str()) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return false,
        None => None,
    };
    let authority = req.uri.authority().map(|a| a.as_str());
    if host.is_none() && authority.is_none() {
        return false;
    }
    let Ok(u) = url::Url::parse(origin) else { return false };
    let h = u.host_str().unwrap_or("");
    let with_port = match u.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    };
    let matches = |addressed: &str| with_port.eq_ignore_ascii_case(addressed) || h.eq_ignore_ascii_case(addressed);
    host.is_none_or(matches) && authority.is_none_or(matches)
}

fn legacy_param(query: Option<&str>) -> Option<(String, String)> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| LEGACY_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// `path?query` with the value of `name` replaced.
pub fn replace_param(path_and_query: &str, name: &str, value: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else { return path_and_query.to_string() };
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            out.append_pair(&k, value);
        } else {
            out.append_pair(&k, &v);
        }
    }
    format!("{path}?{}", out.finish())
}

fn error_body(message: &str, code: &str) -> Vec<u8> {
    let kind = if code == "forbidden_origin" { "permission_error" } else { "invalid_request_error" };
    serde_json::json!({"error": {"message": message, "type": kind, "code": code}}).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(replace_param("/messages/?session_id=abc&x=1", "session_id", "zz"), "/messages/?session_id=zz&x=1");
        assert_eq!(legacy_param(Some("sessionId=q")), Some(("sessionId".into(), "q".into())));
        assert_eq!(legacy_param(Some("other=q")), None);
    }

    #[test]
    fn origins() {
        let mut req = RequestHeader::build("POST", b"/mcp", None).unwrap();
        req.insert_header("host", "gw.example:8080").unwrap();
        assert!(same_origin(&req));
        req.insert_header("origin", "http://gw.example:8080").unwrap();
        assert!(same_origin(&req));
        req.insert_header("origin", "http://evil.example").unwrap();
        assert!(!same_origin(&req));
    }

    /// HTTP/2 requests carry `:authority` (in the URI) and usually no `Host`.
    #[test]
    fn origin_against_authority_without_host() {
        // As Pingora's HTTP/2 server builds it: from the request's parts, `:authority` in the URI.
        let parts = http::Request::post("https://gw.example:8443/mcp").body(()).unwrap().into_parts().0;
        let mut req: RequestHeader = parts.into();
        assert!(req.headers.get("host").is_none());
        assert!(same_origin(&req), "no Origin: an SDK client");
        req.insert_header("origin", "https://gw.example:8443").unwrap();
        assert!(same_origin(&req));
        req.insert_header("origin", "https://evil.example").unwrap();
        assert!(!same_origin(&req));
        // Host and :authority both present: Origin must match both.
        req.insert_header("origin", "https://gw.example:8443").unwrap();
        req.insert_header("host", "other.example").unwrap();
        assert!(!same_origin(&req));
        // Neither: nothing to compare with, refused.
        let mut bare = RequestHeader::build("POST", b"/mcp", None).unwrap();
        bare.insert_header("origin", "https://gw.example").unwrap();
        assert!(!same_origin(&bare));
    }
}
