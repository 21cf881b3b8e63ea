//! What the gateway learns from an upstream, and what the client is told when it fails: the
//! one mapping of a Pingora error to the gateway's OpenAI error ([`classify`]), and the one
//! place where the circuit breaker and `mcas_upstream_errors_total` hear about a backend
//! ([`connect_failed`], [`responded`], [`failed`]). Every path reports here: Pingora's
//! `fail_to_connect` / `fail_to_proxy` hooks (subrequests included) and the relays.

use crate::clock;
use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use crate::proxy::ctx::{Ctx, Routed, UpstreamState};
use crate::proxy::{rate_limit, respond};
use pingora::prelude::*;
use pingora_proxy::Session;

/// The error for an answer the gateway cannot read although it asked for `identity`.
pub const ENCODED_ANSWER: ErrorType = ErrorType::Custom("upstream answer is content-encoded");

/// Maps a Pingora error to the answer the client gets; `None` when the client is gone.
pub fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    if e.etype() == &ENCODED_ANSWER {
        return Some(GatewayError::BadGateway(
            "the upstream sent a compressed answer although asked for identity; it cannot be accounted".into(),
        ));
    }
    match e.etype() {
        HTTPStatus(503) => Some(GatewayError::Unavailable("no healthy backend for this request".into())),
        HTTPStatus(code) if *code == 504 => Some(GatewayError::GatewayTimeout("upstream timed out".into())),
        HTTPStatus(code) if *code >= 500 => Some(GatewayError::BadGateway("upstream failed".into())),
        HTTPStatus(400) => Some(GatewayError::BadRequest("malformed request".into())),
        // A chunk size that is not hex, overflows, or a chunk longer than announced: the
        // client's framing, whether the body was being read here or on its way upstream
        // (pingora-core's `INVALID_CHUNK` error type).
        Custom("InvalidChunk") if e.esource() != &ErrorSource::Upstream => {
            Some(GatewayError::BadRequest("invalid chunked request body".into()))
        }
        ConnectTimedout => Some(GatewayError::GatewayTimeout("timed out connecting to the upstream".into())),
        ReadTimedout | WriteTimedout => {
            Some(GatewayError::GatewayTimeout("the upstream did not answer in time".into()))
        }
        _ => match e.esource() {
            ErrorSource::Upstream => {
                Some(GatewayError::BadGateway(format!("upstream unreachable or failed ({})", e.etype().as_str())))
            }
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => None,
                _ => Some(GatewayError::BadRequest("malformed request".into())),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(GatewayError::Internal),
        },
    }
}

/// The request failed before the backend's answer header (on any path, the connect
/// excepted): records it ([`failed`]) and, unless a response already started or the client
/// is gone, answers with the mapped error and closes the connection (Pingora will not reuse
/// it: say so, or clients reuse a dead one). Returns the status the failure maps to (`None`:
/// the client is gone).
pub async fn answer(session: &mut Session, ctx: &mut Ctx, e: &Error) -> Result<Option<u16>> {
    if e.etype() == &super::pool::POOL_FULL {
        return Ok(ctx.local_status); // answered by the pool (503, Retry-After); no backend failed
    }
    let Some(err) = classify(e) else { return Ok(None) };
    if let Some(r) = &ctx.routed {
        failed(r, &ctx.upstream, e);
    }
    // Else the client went away while the answer was being written.
    if session.response_written().is_none() {
        refuse(session, ctx, &err).await?;
    }
    Ok(Some(err.status()))
}

/// Answers with the gateway's own error and closes the connection.
pub async fn refuse(session: &mut Session, ctx: &mut Ctx, e: &GatewayError) -> Result<()> {
    ctx.local_status = Some(e.status());
    ctx.refusal = Some(e.parts().2);
    session.set_keepalive(None);
    let extra = rate_limit::headers(ctx);
    respond::error_with(session, e, &ctx.request_id, extra).await
}

/// After a failed connect (nothing was sent): counts it against the backend's circuit and in
/// `upstream_errors{kind="connect"}`, and says whether the request may move to the next
/// backend on the ring.
pub fn connect_failed(routed: &Routed, up: &UpstreamState) -> bool {
    let p = &routed.provider;
    count(routed, "connect");
    if let Some(b) = &up.backend {
        p.record_failure(b);
    }
    let now = clock::now_ms();
    let attempts = up.tried.len();
    let left = p.backends.iter().enumerate().any(|(i, b)| !up.tried.contains(&i) && p.usable(b, now));
    let retry = attempts <= p.fleet.retries && left;
    if retry {
        if let Some(c) = routed.provider_metrics().and_then(|m| m.retries()) {
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

/// A request failed: counted in `upstream_errors` by its kind, and against the circuit when
/// the backend failed after the connect but before any response header (read/write timeout,
/// reset). A failed connect was counted by [`connect_failed`] already.
pub fn failed(routed: &Routed, up: &UpstreamState, e: &Error) {
    use ErrorType::*;
    if !is_connect(e) {
        count(routed, e.etype().as_str());
    }
    let after_connect = matches!(e.etype(), ReadTimedout | WriteTimedout | ReadError | WriteError | ConnectionClosed);
    if up.header_at.is_none() && after_connect && *e.esource() == ErrorSource::Upstream {
        if let Some(b) = &up.backend {
            routed.provider.record_failure(b);
        }
    }
}

fn count(routed: &Routed, kind: &str) {
    if kind == "connect" {
        // The common failure: its child is bound when the config compiles.
        if let Some(c) = routed.provider_metrics().and_then(|m| m.connect_errors()) {
            c.inc();
        }
        return;
    }
    if let Some(m) = metrics() {
        m.upstream_errors.with_label_values(&[&routed.provider.name, kind]).inc();
    }
}

/// Pingora's connect errors (the first group of `ErrorType`).
fn is_connect(e: &Error) -> bool {
    use ErrorType::*;
    matches!(
        e.etype(),
        ConnectTimedout
            | ConnectRefused
            | ConnectNoRoute
            | TLSWantX509Lookup
            | TLSHandshakeFailure
            | TLSHandshakeTimedout
            | InvalidCert
            | HandshakeError
            | ConnectError
            | BindError
            | SocketError
            | ConnectProxyFailure
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(etype: ErrorType, source: ErrorSource) -> Option<u16> {
        let mut e = Error::new(etype);
        e.esource = source;
        classify(&e).map(|g| g.status())
    }

    /// One table for every path: what the client is told for each kind of failure.
    #[test]
    fn failures_map_to_the_gateway_errors() {
        use ErrorSource::*;
        use ErrorType::*;
        assert_eq!(status(ConnectTimedout, Upstream), Some(504));
        assert_eq!(status(ConnectRefused, Upstream), Some(502));
        assert_eq!(status(ReadTimedout, Upstream), Some(504));
        assert_eq!(status(ConnectionClosed, Upstream), Some(502));
        assert_eq!(status(HTTPStatus(503), Unset), Some(503));
        assert_eq!(status(ENCODED_ANSWER, Upstream), Some(502));
        assert_eq!(status(Custom("InvalidChunk"), Downstream), Some(400));
        assert_eq!(status(InvalidHTTPHeader, Downstream), Some(400));
        assert_eq!(status(ConnectionClosed, Downstream), None, "the client is gone: nobody to answer");
        assert_eq!(status(InternalError, Internal), Some(500));
    }

    #[test]
    fn connect_errors_are_told_apart() {
        assert!(is_connect(&Error::new(ErrorType::ConnectRefused)));
        assert!(is_connect(&Error::new(ErrorType::TLSHandshakeFailure)));
        assert!(!is_connect(&Error::new(ErrorType::ReadTimedout)));
        assert!(!is_connect(&Error::new(ErrorType::ConnectionClosed)));
    }
}
