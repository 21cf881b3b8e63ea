//! Forward: pick a backend, build the peer (timeouts, TLS, SNI), and rewrite the request
//! header: provider path and Host, the provider's key in place of the client's, request id
//! and forwarding headers, `Accept-Encoding: identity` where the gateway reads the answer
//! (and the check that the answer came plain).

use super::ctx::{Routed, UpstreamState};
use crate::upstream::clock;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::Instant;

/// Chooses a backend not yet tried by this request; `None` when none is left.
pub fn peer(routed: &Routed, up: &mut UpstreamState) -> Option<Box<HttpPeer>> {
    let provider = &routed.provider;
    let (index, backend) = match super::streams::pinned_backend(routed, &up.tried) {
        Some(pinned) => pinned?,
        None => provider.pick(&routed.hash_key, &up.tried)?,
    };
    up.tried.push(index);
    let (tls, sni) = match &provider.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(backend.addr, tls, sni);
    let t = &provider.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(routed.streams.idle(provider));
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle);
    if let Some(tls) = &provider.tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        peer.options.ca = tls.ca.clone();
    }
    up.set_backend(backend);
    up.chosen_at = Some(Instant::now());
    Some(Box::new(peer))
}

pub fn rewrite_request(req: &mut RequestHeader, routed: &Routed) -> Result<()> {
    let uri: http::Uri = routed
        .upstream_path
        .parse()
        .map_err(|_| Error::explain(ErrorType::InternalError, "upstream path is not a valid URI"))?;
    req.set_uri(uri);
    req.remove_header(&http::header::AUTHORIZATION);
    req.remove_header("x-api-key");
    if let Some(kept) = super::auth::strip_protocol_key(req) {
        req.remove_header(&http::header::SEC_WEBSOCKET_PROTOCOL);
        if let Some(v) = kept {
            req.insert_header(http::header::SEC_WEBSOCKET_PROTOCOL, v)?;
        }
    }
    // The body was already read by the gateway (and 100 Continue answered if asked).
    req.remove_header(&http::header::EXPECT);
    let built = &routed.provider.headers;
    match (&routed.provider.api_key, &built.authorization) {
        (Some(_), Some(v)) => req.insert_header(http::header::AUTHORIZATION, v.clone())?,
        (Some(key), None) => req.insert_header(http::header::AUTHORIZATION, format!("Bearer {}", key.expose()))?,
        (None, _) => {}
    }
    match &built.host {
        Some(v) => req.insert_header(http::header::HOST, v.clone())?,
        None => req.insert_header(http::header::HOST, routed.provider.host_header.as_str())?,
    }
    req.insert_header("x-request-id", routed.request_id.as_str())?;
    if let Some(ip) = &routed.client_ip {
        let xff = match req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
            _ => ip.clone(),
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(routed.client_proto))?;
    if observed(routed) {
        // The gateway reads these answers (usage, model list, MCP endpoint): plain bytes only.
        req.insert_header(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"))?;
        req.remove_header(&http::header::TE);
    }
    Ok(())
}

/// Whether the gateway reads this request's answer: every request except a WebSocket upgrade
/// (tunnels carry bytes the gateway does not look into).
pub fn observed(routed: &Routed) -> bool {
    !routed.streams.upgrade
}

/// The error for an answer the gateway cannot read although it asked for `identity`.
pub const ENCODED_ANSWER: ErrorType = ErrorType::Custom("upstream answer is content-encoded");

/// An observed answer must arrive as plain bytes: a `Content-Encoding` other than `identity`
/// (or a transfer coding other than `chunked`) would hide `usage` and defeat the rewrites, so
/// it is refused (502) rather than passed on unaccounted. Answers without a body pass.
pub fn check_encoding(routed: &Routed, resp: &ResponseHeader) -> Result<()> {
    let status = resp.status.as_u16();
    if !observed(routed) || status == 204 || status == 304 || resp.status.is_informational() {
        return Ok(());
    }
    let coded = |name: http::header::HeaderName, plain: &[&str]| {
        resp.headers.get_all(name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return true };
            v.split(',').map(str::trim).any(|c| !c.is_empty() && !plain.iter().any(|p| c.eq_ignore_ascii_case(p)))
        })
    };
    if coded(http::header::CONTENT_ENCODING, &["identity"]) || coded(http::header::TRANSFER_ENCODING, &["chunked"]) {
        return Error::e_explain(ENCODED_ANSWER, "the upstream compressed an answer the gateway must read");
    }
    Ok(())
}

/// After a failed connect (nothing was sent): counts it against the backend's circuit and
/// says whether the request may move to the next backend on the ring.
pub fn connect_failed(routed: &Routed, up: &UpstreamState) -> bool {
    let p = &routed.provider;
    if let Some(b) = &up.backend {
        p.record_failure(b);
    }
    let now = clock::now_ms();
    let attempts = up.tried.len();
    let left = p.backends.iter().enumerate().any(|(i, b)| !up.tried.contains(&i) && p.usable(b, now));
    let retry = attempts <= p.fleet.retries && left;
    if retry {
        if let Some(c) = routed.provider_metrics().and_then(|p| p.retries()) {
            c.inc();
        }
    }
    retry
}

/// The response header arrived: 5xx counts against the circuit, anything else closes it.
pub fn responded(routed: &Routed, up: &UpstreamState, status: u16) {
    if let Some(b) = &up.backend {
        if status >= 500 {
            routed.provider.record_failure(b);
        } else {
            routed.provider.record_success(b);
        }
    }
}

/// A request failed after connecting but before any response header (read/write timeout,
/// reset): counts against the circuit. Connect failures were counted in [`connect_failed`].
pub fn failed_before_header(routed: &Routed, up: &UpstreamState, e: &Error) {
    use ErrorType::*;
    let after_connect = matches!(e.etype(), ReadTimedout | WriteTimedout | ReadError | WriteError | ConnectionClosed);
    if up.header_at.is_none() && after_connect && *e.esource() == ErrorSource::Upstream {
        if let Some(b) = &up.backend {
            routed.provider.record_failure(b);
        }
    }
}
