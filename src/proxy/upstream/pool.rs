//! `providers[].pool` on the request path: after a backend was chosen, wait for one of its
//! connection slots (`crate::fleet::pool`) before connecting, and tie the peer to that slot's
//! connection. The slot is held in the context until the request ends (`logging`), after
//! Pingora has put the connection back into its pool. Why this lives in the gateway and not
//! in Pingora's connection pool: docs/pingora.md, "Upstream connection pools".

use crate::error::GatewayError;
use crate::fleet::pool::Refusal;
use crate::observe::metrics::metrics;
use crate::proxy::ctx::Ctx;
use crate::proxy::{rate_limit, respond};
use http::HeaderValue;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::Session;
use std::time::Duration;

/// The request was refused by a full pool and has been answered (503 + `Retry-After`).
pub const POOL_FULL: ErrorType = ErrorType::Custom("upstream pool full");

/// Holds a slot of the chosen backend's pool (none: nothing to wait for) and ties `peer` to
/// the slot's connection: Pingora reuses a connection only for a peer of the same group key,
/// and keeps it idle only for slots below `max_idle` (the others close theirs at release).
/// A refusal is answered here and returned as [`POOL_FULL`]; a client that leaves while
/// waiting gives up its place and gets a downstream error.
pub async fn hold(session: &mut Session, ctx: &mut Ctx, peer: &mut HttpPeer) -> Result<()> {
    let Some(backend) = ctx.upstream.backend.clone() else { return Ok(()) };
    let Some(pool) = backend.pool.clone() else { return Ok(()) };
    let acquired = tokio::select! {
        biased;
        r = pool.acquire() => r,
        e = client_gone(session) => return Err(e),
    };
    match acquired {
        Ok(slot) => {
            peer.group_key = slot.index() as u64 + 1;
            if !slot.keeps_idle() {
                peer.options.idle_timeout = Some(Duration::ZERO);
            }
            ctx.upstream.pool_slot = Some(slot);
            Ok(())
        }
        Err(why) => {
            let provider = ctx.routed.as_ref().map(|r| r.provider.name.clone()).unwrap_or_default();
            if let Some(m) = metrics() {
                m.pool_refusals.with_label_values(&[&*provider, &backend.addr.to_string(), why.as_str()]).inc();
            }
            refuse(session, ctx, why, pool.settings.retry_after_secs()).await?;
            Error::e_explain(POOL_FULL, why.as_str())
        }
    }
}

async fn refuse(session: &mut Session, ctx: &mut Ctx, why: Refusal, retry_after: u64) -> Result<()> {
    let message = match why {
        Refusal::QueueFull => "the backend's connection pool and its queue are full; retry later",
        Refusal::Timeout => "no connection to the backend became free in time; retry later",
    };
    let e = GatewayError::Unavailable(message.into());
    ctx.local_status = Some(e.status());
    let mut extra = rate_limit::headers(ctx);
    extra.push(("retry-after", HeaderValue::from(retry_after)));
    respond::error_with(session, &e, &ctx.request_id, extra).await
}

/// Resolves when the client closes its connection (only watched once its request body is
/// in: reading earlier would consume the body). Bytes of a pipelined request end the watch.
async fn client_gone(session: &mut Session) -> Box<Error> {
    // A subrequest (the model list) has no connection of its own to watch; its main request's
    // client is watched by Pingora's subrequest pipe.
    if session.subrequest_ctx.is_none() && session.is_body_done() {
        if let Err(e) = session.downstream_session.read_body_or_idle(true).await {
            return e;
        }
    }
    std::future::pending().await
}
