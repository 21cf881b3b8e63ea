//! Bodies larger than Pingora's retry buffer: the main request, having read the whole body to
//! learn the model, replays it through a subrequest that runs this same `ProxyHttp` (its own
//! `new_ctx`, `request_filter`, `upstream_peer`, filters, `fail_to_proxy`, `logging`). The
//! routing decision travels in the subrequest's user context so the subrequest skips
//! authentication and routing; the subrequest reaches the backend through Pingora's proxy
//! loop and [`super::upstream`] like any request.
//!
//! The Pingora 0.9.1 limitation that forces this path: a body read in `request_filter` is
//! replayed to the upstream only from the session's retry buffer, and that buffer is a fixed
//! 64 KiB (`BODY_BUF_LIMIT`, a `const` in vendor/pingora-core/src/protocols/http/v1/common.rs
//! and again in v2/server.rs; the same const in subrequest/server.rs). A larger body read whole
//! is never forwarded. A Pingora patch making that limit settable per session (for example
//! from `server.max_body`) would let the proxy loop replay every body the gateway accepts, and
//! this module would go; it stays for now because such a patch touches the v1, v2 and
//! subrequest server sessions and `Session::enable_retry_buffering`, and the routing step's
//! body plan with them.

use super::ctx::Routed;
use super::respond;
use crate::error::GatewayError;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::protocols::http::subrequest::server::SubrequestHandle;
use pingora_proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora_proxy::subrequest::{BodyMode, Ctx as SubCtx};
use pingora_proxy::Session;

/// In a subrequest: the decision the main request made.
pub fn take_routed(session: &mut Session) -> Option<Routed> {
    let sub = session.subrequest_ctx.as_mut()?;
    let user = sub.user_ctx_mut()?;
    user.downcast_mut::<Option<Routed>>().and_then(Option::take)
}

/// A subrequest of this request that carries `routed`; `None` where none can be spawned.
///
/// Pingora hands the subrequest the request header as HTTP/1 text and parses it back, which
/// fails for a request that came over HTTP/2 ("HTTP/2" is no HTTP/1 version): the header
/// reads as HTTP/1.1 while it is copied.
pub fn subrequest(
    session: &mut Session,
    routed: Routed,
    mode: BodyMode,
) -> Option<(pingora_proxy::PreparedSubrequest, SubrequestHandle)> {
    let user: Box<dyn std::any::Any + Send + Sync> = Box::new(Some(routed));
    let sub_ctx = SubCtx::builder().body_mode(mode).user_ctx(user).build();
    let version = session.req_header().version;
    session.req_header_mut().set_version(http::Version::HTTP_11);
    let made = session.subrequest_spawner.as_ref().map(|s| s.create_subrequest(session.as_downstream(), sub_ctx));
    session.req_header_mut().set_version(version);
    made
}

/// Runs the subrequest and pipes its response to the client. Errors after the response
/// started are the subrequest's to report; the main request only answers when nothing did.
pub async fn run(session: &mut Session, mut routed: Routed, body: Vec<Bytes>) -> Result<()> {
    let request_id = routed.request_id.clone();
    let headers = &session.req_header().headers;
    if routed.body_len.is_none()
        && !headers.contains_key(http::header::CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // An HTTP/2 request without a length: the subrequest would read no body at all.
        routed.body_len = Some(body.iter().map(Bytes::len).sum());
    }
    let Some((sub, handle)) = subrequest(session, routed, BodyMode::ExpectBody) else {
        return respond::error(session, &GatewayError::Internal, &request_id).await;
    };
    let input = if body.is_empty() { InputBody::NoBody } else { InputBody::Bytes(body) };
    match pipe_subrequest(session, sub, handle, |t| Ok(Some(t)), InputBodyType::Preset(input)).await {
        Ok(_) => Ok(()),
        Err(pe) => {
            if !pe.state.header_received && session.response_written().is_none() {
                // The subrequest's own answer did not come through the pipe: say what it would
                // have said (a compressed answer, a timeout, …).
                let e = pe
                    .from_subreq
                    .then(|| super::upstream::failure::classify(&pe.error))
                    .flatten()
                    .unwrap_or_else(|| GatewayError::BadGateway("upstream failed".into()));
                return respond::error(session, &e, &request_id).await;
            }
            log::debug!("subrequest pipe ended: {}", pe.error);
            Ok(())
        }
    }
}
