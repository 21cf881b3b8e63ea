//! Subrequests of this same `ProxyHttp`: a request the gateway has admitted and routed runs
//! again as a subrequest (its own `new_ctx`, `request_filter`, `upstream_peer`, filters,
//! `fail_to_proxy`, `logging`) whose answer the main request reads first. The routing decision
//! travels in the subrequest's user context, so the subrequest skips authentication and
//! routing. Used by the model list (`models_list`), whose answer must be held whole before
//! the client sees its header.
//!
//! (Bodies over Pingora's 64 KiB retry buffer once took this way too; the retry buffer is
//! sized to `server.max_body` since vendor/patches/0002, so they take Pingora's proxy loop.)

use super::ctx::Routed;
use pingora_core::protocols::http::subrequest::server::SubrequestHandle;
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
pub fn spawn(
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
