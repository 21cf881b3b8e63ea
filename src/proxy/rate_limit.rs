//! Limit: the per-address guard before authentication, the per-key limits after it, the
//! `x-ratelimit-*` headers on every authenticated response, and charging the tokens a
//! response reported.

use super::ctx::Ctx;
use crate::clock::now_ms;
use crate::error::GatewayError;
use crate::keys::KeyEntry;
use crate::limits::per_ip::{IpGuard, IpLimits};
use crate::limits::store::{Denied, Held, IpVerdict, SharedLimits};
use crate::limits::{trusted_proxies, LimitSettings, Refusal};
use crate::observe::metrics::metrics;
use http::HeaderValue;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// What the limit step keeps for the rest of the request.
#[derive(Debug, Default)]
pub struct LimitCtx {
    /// The authenticated key (for the headers of answers the gateway writes itself).
    pub key: Option<Arc<KeyEntry>>,
    /// Held while the request is in flight (a local slot or a lease in the shared store);
    /// dropped with the context however it ends.
    pub held: Held,
    /// `limits.store` when it is shared (tokens are charged there at the end).
    pub store: Option<Arc<SharedLimits>>,
}

/// The address every per-address limit counts against: the client (see
/// `server.trusted_proxies`; every `X-Forwarded-For` line is read), an IPv6 client reduced
/// to its `limits.ipv6_prefix` network.
pub fn client_addr(session: &Session, s: &LimitSettings) -> Option<IpAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())?;
    let client = if s.trusted_proxies.is_empty() {
        peer
    } else {
        // A line that is not visible ASCII cannot be read: it stands for an entry that is
        // not an address, which ends the walk at the nearest trusted hop.
        let lines: Vec<&str> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("unknown"))
            .collect();
        trusted_proxies::client_addr(peer, &lines, &s.trusted_proxies)
    };
    Some(trusted_proxies::limit_bucket(client, s.ipv6_prefix))
}

fn refused(r: Refusal, key: &str) -> GatewayError {
    if let Some(m) = metrics() {
        m.limit_refusals.with_label_values(&[r.kind.code(), key]).inc();
    }
    GatewayError::RateLimited(r)
}

fn store_down() -> GatewayError {
    GatewayError::Unavailable("the rate limit store is unavailable; try again later".into())
}

/// Before authentication: the address's request rate and its cooling-off after failures.
/// With a shared store the rate is counted there; the cooling-off stays local.
pub async fn guard(
    g: &IpGuard,
    store: Option<&Arc<SharedLimits>>,
    s: &LimitSettings,
    ip: Option<IpAddr>,
) -> Result<(), GatewayError> {
    let Some(ip) = ip else { return Ok(()) };
    let (Some(store), Some(rpm)) = (store, s.per_ip.rpm) else {
        return g.check(ip, &s.per_ip, now_ms()).map_err(|r| refused(r, "none"));
    };
    let local_part = IpLimits { rpm: None, ..s.per_ip };
    g.check(ip, &local_part, now_ms()).map_err(|r| refused(r, "none"))?;
    match store.admit_ip(ip, rpm, s.per_ip.max_tracked).await {
        Ok(IpVerdict::Admitted) => Ok(()),
        Ok(IpVerdict::Local) => g.check(ip, &s.per_ip, now_ms()).map_err(|r| refused(r, "none")),
        Err(Denied::Limit(r)) => Err(refused(r, "none")),
        Err(Denied::StoreDown) => Err(store_down()),
    }
}

pub fn auth_failed(g: &IpGuard, s: &LimitSettings, ip: Option<IpAddr>) {
    if let Some(ip) = ip {
        g.failed(ip, &s.per_ip, now_ms());
    }
}

/// After authentication: the key's rpm, tpm and concurrency, counted here or in the shared
/// store (`limits.store`).
pub async fn admit(
    store: Option<&Arc<SharedLimits>>,
    key: &Arc<KeyEntry>,
    lc: &mut LimitCtx,
) -> Result<(), GatewayError> {
    lc.key = Some(key.clone());
    if key.limits.is_unlimited() {
        return Ok(());
    }
    if let Some(store) = store {
        lc.store = Some(store.clone());
        return match store.admit(&key.name, &key.limits, &key.state).await {
            Ok(held) => {
                lc.held = held;
                Ok(())
            }
            Err(Denied::Limit(r)) => Err(refused(r, &key.name)),
            Err(Denied::StoreDown) => Err(store_down()),
        };
    }
    match key.state.admit(&key.limits, now_ms()) {
        Ok((slot, _)) => {
            lc.held.slot = slot;
            Ok(())
        }
        Err(r) => Err(refused(r, &key.name)),
    }
}

/// The key this request authenticated as, in the main request or its subrequest (the model list).
fn key_of(ctx: &Ctx) -> Option<&Arc<KeyEntry>> {
    ctx.routed.as_ref().map(|r| &r.key).or(ctx.limit.key.as_ref())
}

/// `x-ratelimit-*` for the limits the key has (none for an unlimited one).
pub fn headers(ctx: &Ctx) -> Vec<(&'static str, HeaderValue)> {
    match key_of(ctx) {
        Some(k) if !k.limits.is_unlimited() => match (&ctx.limit.store, &ctx.limit.held.window) {
            (Some(store), Some(w)) => store.snapshot(w, &k.limits).headers(),
            _ => k.state.snapshot(&k.limits, now_ms()).headers(),
        },
        _ => Vec::new(),
    }
}

/// Headers for an answer the gateway writes itself: the limits, and `Retry-After` on a 429.
pub fn answer_headers(ctx: &Ctx, e: &GatewayError) -> Vec<(&'static str, HeaderValue)> {
    let mut h = headers(ctx);
    match e {
        GatewayError::RateLimited(r) => h.push(("retry-after", HeaderValue::from(r.retry_after_secs()))),
        GatewayError::Overloaded(_, secs) => h.push(("retry-after", HeaderValue::from(*secs))),
        _ => {}
    }
    h
}

/// At the end of a request: charge the tokens its response reported, release the slot.
pub fn finish(ctx: &mut Ctx) {
    let held = std::mem::take(&mut ctx.limit.held);
    let (Some(u), Some(r)) = (ctx.usage.usage, ctx.routed.as_ref()) else { return };
    let k = &r.key;
    if k.limits.tpm.is_some() {
        let tokens = u.prompt_tokens + u.completion_tokens;
        // Counted here too, so an outage of the store starts from this instance's own usage.
        k.state.charge(&k.limits, tokens, now_ms());
        if let (Some(store), Some(_)) = (&ctx.limit.store, &held.window) {
            store.charge(&k.name, &k.limits, tokens);
        }
    }
}
