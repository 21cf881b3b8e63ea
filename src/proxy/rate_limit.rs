//! Limit: the per-address guard before authentication, the per-key limits after it, the
//! `x-ratelimit-*` headers on every authenticated response, and charging the tokens a
//! response reported.

use super::ctx::Ctx;
use crate::clock::now_ms;
use crate::error::GatewayError;
use crate::keys::KeyEntry;
use crate::limits::per_ip::{IpGuard, IpLimits};
use crate::limits::store::{Denied, Held, IpVerdict, SharedLimits};
use crate::limits::{trusted_proxies, LimitSettings, Refusal, Snapshot};
use crate::observe::metrics::metrics;
use crate::proxy::header_names as names;
use http::HeaderValue;
use pingora_http::{EncodedFields, KnownHeaderName};
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
    /// The answer's tokens were charged ([`charge_tokens`]).
    pub charged: bool,
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
        return g.check(ip, &s.per_ip, now_ms).map_err(|r| refused(r, "none"));
    };
    let local_part = IpLimits { rpm: None, ..s.per_ip };
    g.check(ip, &local_part, now_ms).map_err(|r| refused(r, "none"))?;
    match store.admit_ip(ip, rpm, s.per_ip.max_tracked).await {
        Ok(IpVerdict::Admitted) => Ok(()),
        Ok(IpVerdict::Local) => g.check(ip, &s.per_ip, now_ms).map_err(|r| refused(r, "none")),
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

/// The key's budget now, for the `x-ratelimit-*` headers (`None` for an unlimited key).
pub fn snapshot(ctx: &Ctx) -> Option<Snapshot> {
    snapshot_at(ctx, now_ms)
}

/// [`snapshot`] at the time `now` gives (asked only for a key kept in this process): the
/// answer's header carries the budget as of the moment that header arrived, a clock read the
/// request already made (`crate::clock::ms_at`).
pub fn snapshot_at(ctx: &Ctx, now: impl FnOnce() -> u64) -> Option<Snapshot> {
    match key_of(ctx) {
        Some(k) if !k.limits.is_unlimited() => Some(match (&ctx.limit.store, &ctx.limit.held.window) {
            (Some(store), Some(w)) => store.snapshot(w, &k.limits),
            _ => k.state.snapshot(&k.limits, now()),
        }),
        _ => None,
    }
}

/// `x-ratelimit-*` for the limits the key has (none for an unlimited one).
pub fn headers(ctx: &Ctx) -> Vec<(&'static str, HeaderValue)> {
    snapshot(ctx).map(|s| s.headers()).unwrap_or_default()
}

/// The `x-ratelimit-*` names [`append_headers`] writes for `s`, in its order.
pub fn header_names(s: &Snapshot) -> impl Iterator<Item = &'static KnownHeaderName> {
    let [limit_req, remaining_req, reset_req, limit_tok, remaining_tok, reset_tok] = &names::RATE_LIMIT;
    let requests = s.limits.rpm.is_some().then_some([limit_req, remaining_req, reset_req]);
    let tokens = s.limits.tpm.is_some().then_some([limit_tok, remaining_tok, reset_tok]);
    requests.into_iter().chain(tokens).flatten()
}

/// The headers [`Snapshot::headers`] gives, in its order, written as encoded lines among the
/// fields the caller appends at once (`ResponseHeader::append_encoded_headers`,
/// vendor/patches/0024): no header value built, no map insert, no call per field. The caller
/// removes the upstream's fields of these names first ([`header_names`]).
pub fn append_headers(fields: &mut EncodedFields<'_>, s: &Snapshot) {
    let [limit_req, remaining_req, reset_req, limit_tok, remaining_tok, reset_tok] = &names::RATE_LIMIT;
    let reset = crate::limits::ResetText::of(s.reset);
    let mut number = itoa::Buffer::new();
    if let Some(l) = s.limits.rpm {
        fields.field(limit_req, number.format(l).as_bytes());
        fields.field(remaining_req, number.format(l.saturating_sub(s.requests)).as_bytes());
        fields.field(reset_req, reset.as_bytes());
    }
    if let Some(l) = s.limits.tpm {
        fields.field(limit_tok, number.format(l).as_bytes());
        fields.field(remaining_tok, number.format(l.saturating_sub(s.tokens)).as_bytes());
        fields.field(reset_tok, reset.as_bytes());
    }
}

/// Room for the lines of [`append_headers`]: six names of up to 30 bytes and their values.
pub const APPENDED_BYTES: usize = 6 * 56;

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

/// Charges the tokens the answer reported, once. Called when the answer's last bytes pass the
/// body filter, before they reach the client, so that the client's next request already sees
/// them counted; and from [`finish`] for an answer that did not end that way.
pub fn charge_tokens(ctx: &mut Ctx) {
    if ctx.limit.charged {
        return;
    }
    let (Some(u), Some(r)) = (ctx.usage.usage, ctx.routed.as_ref()) else { return };
    ctx.limit.charged = true;
    let k = &r.key;
    if k.limits.tpm.is_some() {
        let tokens = u.prompt_tokens + u.completion_tokens;
        // Counted here too, so an outage of the store starts from this instance's own usage.
        k.state.charge(&k.limits, tokens, now_ms());
        if let (Some(store), Some(_)) = (&ctx.limit.store, &ctx.limit.held.window) {
            store.charge(&k.name, &k.limits, tokens);
        }
    }
}

/// At the end of a request: charge the tokens its response reported (if the end of its body
/// did not), release the slot.
pub fn finish(ctx: &mut Ctx) {
    charge_tokens(ctx);
    drop(std::mem::take(&mut ctx.limit.held));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::KeyLimits;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn wire(h: &ResponseHeader) -> Vec<u8> {
        let mut w = Vec::new();
        h.header_to_h1_wire(&mut w);
        w
    }

    /// What the headers were before the fast path: `Snapshot::headers`, inserted by name.
    fn by_name(s: &Snapshot) -> Vec<u8> {
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (name, value) in s.headers() {
            h.insert_header(name, value).unwrap();
        }
        wire(&h)
    }

    #[test]
    fn appended_headers_are_the_snapshots_headers() {
        let limits = [
            KeyLimits { rpm: Some(10), tpm: Some(100), ..Default::default() },
            KeyLimits { rpm: Some(10), tpm: None, ..Default::default() },
            KeyLimits { rpm: None, tpm: Some(u64::MAX), ..Default::default() },
            KeyLimits { rpm: Some(u64::MAX), tpm: Some(0), ..Default::default() },
            KeyLimits { rpm: Some(11), tpm: Some(101), ..Default::default() },
        ];
        let resets = [0u64, 1, 999, 1000, 1001, 1999, 2000, 59_999, 60_000, 60_001, 3_600_000, u64::MAX / 2];
        let counts = [(0u64, 0u64), (3, 70), (10, 100), (u64::MAX, u64::MAX)];
        // Every combination, in an order where limits and resets change between answers.
        for l in limits {
            for ms in resets {
                for (requests, tokens) in counts {
                    let s = Snapshot { limits: l, requests, tokens, reset: Duration::from_millis(ms) };
                    let mut h = ResponseHeader::build(200, None).unwrap();
                    h.append_encoded_headers(APPENDED_BYTES, |f| append_headers(f, &s)).unwrap();
                    assert_eq!(wire(&h), by_name(&s), "{s:?}");
                    assert!(h.headers.is_empty());
                    let names: Vec<&str> = s.headers().iter().map(|(n, _)| *n).collect();
                    let listed: Vec<&str> = header_names(&s).map(|k| k.name().as_str()).collect();
                    assert_eq!(listed, names);
                }
            }
        }
    }
}
