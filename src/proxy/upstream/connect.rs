//! Choosing a backend and connecting to it, with failover to the next backend on the ring
//! while nothing was sent. Pingora's proxy loop asks [`peer`] in `upstream_peer` and retries
//! through `fail_to_connect`; the relays run the same choice in [`connect`].

use super::failure;
use crate::error::GatewayError;
use crate::proxy::ctx::{Ctx, Routed, UpstreamState};
use crate::proxy::long_lived;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::Session;
use std::future::Future;
use std::time::Instant;

/// Chooses a backend not yet tried by this request (the pinned one for a sealed MCP
/// session); `None` when none is left.
pub fn peer(routed: &Routed, up: &mut UpstreamState) -> Option<Box<HttpPeer>> {
    let provider = &routed.provider;
    let (index, backend) = match long_lived::pinned_backend(routed, &up.tried) {
        Some(pinned) => pinned?,
        None if routed.streams.new_session => provider.place(&up.tried)?,
        None => provider.pick_for(&routed.hash_key, &up.tried, routed.inference.as_deref(), routed.model.as_deref())?,
    };
    up.tried.push(index);
    let (tls, sni) = match &provider.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    // Boxed as built and set in place: the peer is large, and each move of it is a copy.
    let mut peer = Box::new(HttpPeer::new(backend.addr, tls, sni));
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
    Some(peer)
}

/// For the relays: picks a backend and connects with `open`, moving on to the next backend
/// when a connect fails (nothing was sent yet). `None` when the client has been answered with
/// an error.
pub async fn connect<T, F, Fut>(session: &mut Session, ctx: &mut Ctx, open: F) -> Result<Option<(T, Box<HttpPeer>)>>
where
    F: Fn(Box<HttpPeer>) -> Fut,
    Fut: Future<Output = (Result<T>, Box<HttpPeer>)>,
{
    loop {
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        let Some(mut peer) = peer(routed, &mut ctx.upstream) else {
            let e = GatewayError::Unavailable("no healthy backend for this request".into());
            failure::refuse(session, ctx, &e).await?;
            return Ok(None);
        };
        // Refused (answered already) or the client left while waiting for a connection.
        if super::pool::hold(session, ctx, &mut peer).await.is_err() {
            return Ok(None);
        }
        let (opened, peer) = open(peer).await;
        let mut e = match opened {
            Ok(conn) => return Ok(Some((conn, peer))),
            Err(e) => e,
        };
        // As Pingora marks a failed connect of its proxy loop.
        e.as_up();
        let Some(routed) = ctx.routed.as_ref() else { return Ok(None) };
        if failure::connect_failed(routed, &ctx.upstream) {
            continue;
        }
        failure::answer(session, ctx, &e).await?;
        return Ok(None);
    }
}
