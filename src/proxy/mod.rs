//! The request path: one Pingora `ProxyHttp` implementation that only dispatches to a module
//! per step — [`local`] (health), [`credentials`], [`route`], [`upstream`], [`usage`] (observe),
//! [`account`] — and [`subrequest`] for the model list.

pub mod account;
pub mod connection_gate;
pub mod credentials;
pub mod ctx;
pub mod fields;
pub mod framing;
pub mod header_names;
pub mod heartbeat;
pub mod inference;
pub mod local;
pub mod long_lived;
pub mod long_lived_caps;
pub mod mcp_session;
pub mod model;
pub mod models_list;
pub mod rate_limit;
pub mod respond;
pub mod response_ids;
pub mod rewrite;
pub mod route;
pub mod subrequest;
pub mod tunnel;
pub mod upstream;
pub mod usage;
pub mod websocket;
pub mod ws_frames;

use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::Ctx;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// What a step decided.
pub enum Step {
    /// Go on to the upstream.
    Continue,
    /// The gateway has answered; stop.
    Answered,
}

pub struct Gateway {
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// Per-address pre-auth state; outlives reloads.
    pub guard: Arc<crate::limits::per_ip::IpGuard>,
    /// Backend connections of the requests the gateway carries itself (tunnels, relays).
    connectors: upstream::Connectors,
    /// Announces the end of the grace period to tunnels.
    drain: crate::drain::Drain,
    /// `limits.store` when shared across instances (Redis); `None`: local counters.
    pub store: Option<Arc<crate::limits::store::SharedLimits>>,
}

impl Gateway {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, drain: crate::drain::Drain) -> Self {
        Gateway { runtime, guard: Default::default(), connectors: upstream::Connectors::new(), drain, store: None }
    }

    /// Local endpoints, authentication, routing — everything before an upstream is chosen.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Step> {
        let present = fields::Present::read(session.req_header());
        ctx.request_id = request_id(session.req_header(), &present);
        if let Some(m) = metrics() {
            m.inflight.inc();
            ctx.counted_inflight = true;
        }
        if let Err(e) = framing::check(session) {
            return self.refuse(session, ctx, e).await;
        }
        if let Some(status) = local::try_answer(session, &ctx.request_id).await? {
            ctx.local_status = Some(status);
            return Ok(Step::Answered);
        }
        let rt = self.runtime.load_full();
        let ip = rate_limit::client_addr(session, &rt.limits);
        if let Err(e) = rate_limit::guard(&self.guard, self.store.as_ref(), &rt.limits, ip).await {
            if matches!(&e, GatewayError::RateLimited(r) if r.kind == crate::limits::LimitKind::AuthFailures) {
                // The address is refused at accept while it cools off (connection_gate):
                // after this 429, its attempts cost no HTTP exchange.
                session.set_keepalive(None);
            }
            return self.refuse(session, ctx, e).await;
        }
        let authenticated = credentials::authenticate(session.req_header(), &rt.keys);
        credentials::scrub_query_key(session.req_header_mut());
        let key = match authenticated {
            Ok(k) => k,
            Err(e) => {
                if let Some(m) = metrics() {
                    m.auth_failures.with_label_values(&[e.reason()]).inc();
                }
                rate_limit::auth_failed(&self.guard, &rt.limits, ip);
                return self.refuse(session, ctx, GatewayError::Unauthorized(e)).await;
            }
        };
        ctx.key_name = Some(key.name.clone());
        if let Err(e) = rate_limit::admit(self.store.as_ref(), &key, &mut ctx.limit).await {
            return self.refuse(session, ctx, e).await;
        }
        let meta = route::RequestMeta {
            request_id: ctx.request_id.clone(),
            started: ctx.started,
            client_ip: client_ip(session),
            client_proto: if rt.server.tls.is_some() { "https" } else { "http" },
            present,
        };
        let decision = match route::decide(session, &rt, key, meta, &mut ctx.routed).await? {
            Ok(d) => d,
            Err(e) => return self.refuse(session, ctx, e).await,
        };
        self.routed(session, ctx, &present, decision).await
    }

    /// Admission after routing: the inference queue, the model list, response ids, long-lived
    /// connections. `decide` wrote the route into the context (no copies of it on the way
    /// out). Every exit that does not go on with it (or relay with it) takes it back out, so
    /// the logging step sees what it saw when the route was held by this function (none).
    async fn routed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        present: &fields::Present,
        decision: route::Decision,
    ) -> Result<Step> {
        let route::Decision { mut body, models_list } = decision;
        let Some(routed) = ctx.routed.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no route decided");
        };
        // Every replica saturated: wait here, not in vLLM's queue (before any upstream is chosen).
        let queued = inference::admit(session, routed).await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.refuse_routed(session, ctx, e).await,
            Err(e) => return Err(drop_route(ctx, e)),
        }
        if models_list {
            // Before any stream handling: an upgrade or event stream must not carry the list past the filter.
            ctx.answered_by_subrequest = true;
            if let Some(routed) = ctx.routed.take() {
                models_list::run(session, routed).await?;
            }
            return Ok(Step::Answered);
        }
        let Some(routed) = ctx.routed.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "no route decided");
        };
        match response_ids::admit(session.req_header(), routed, &mut body) {
            Ok(rw) => ctx.response_ids = rw.map(Box::new),
            Err(e) => return self.refuse_routed(session, ctx, e).await,
        }
        let strip_usage = routed.strip_usage;
        let admitted = match long_lived::admit(session, routed, &mut ctx.streams, &ctx.request_id, present).await {
            Ok(a) => a,
            Err(e) => return Err(drop_route(ctx, e)),
        };
        match admitted {
            long_lived::Admit::Answered(status) => {
                ctx.local_status = Some(status);
                ctx.route_label = ctx.routed.take().map(|r| r.route_label);
                return Ok(Step::Answered);
            }
            long_lived::Admit::Heartbeat(every) => {
                let read = match body {
                    route::BodyPlan::Replay(b) => Some(b),
                    route::BodyPlan::Untouched => None,
                };
                if strip_usage {
                    ctx.rewrite = rewrite::ResponseRewrite::StripUsage(Default::default());
                }
                Box::pin(heartbeat::run(session, ctx, &self.connectors, read, every)).await?;
                return Ok(Step::Answered);
            }
            long_lived::Admit::Tunnel => {
                // Boxed: only tunnels pay for the relay's state.
                Box::pin(tunnel::run(session, ctx, &self.connectors.fresh, self.drain.subscribe())).await?;
                return Ok(Step::Answered);
            }
            long_lived::Admit::Continue => {}
        }
        if strip_usage {
            ctx.rewrite = rewrite::ResponseRewrite::StripUsage(Default::default());
        }
        Ok(Step::Continue)
    }

    /// [`Self::refuse`] after routing: the route leaves the context first (and is dropped
    /// after the answer, as when it was held by the caller).
    async fn refuse_routed(&self, session: &mut Session, ctx: &mut Ctx, e: GatewayError) -> Result<Step> {
        let held = ctx.routed.take();
        let step = self.refuse(session, ctx, e).await;
        drop(held);
        step
    }

    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, e: GatewayError) -> Result<Step> {
        ctx.local_status = Some(e.status());
        ctx.refusal = Some(e.parts().2);
        let extra = rate_limit::answer_headers(ctx, &e);
        respond::error_with(session, &e, &ctx.request_id, extra).await?;
        Ok(Step::Answered)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// No downstream modules: Pingora's default adds a (disabled) compression module that is
    /// still consulted on every header and chunk; SSE must never be compressed anyway.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &Ctx) -> bool {
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(routed) = subrequest::take_routed(session) {
            ctx.request_id = routed.request_id.clone();
            ctx.started = routed.started;
            if routed.strip_usage {
                ctx.rewrite = rewrite::ResponseRewrite::StripUsage(Default::default());
            }
            ctx.routed = Some(routed);
            return Ok(false);
        }
        Ok(matches!(self.admit(session, ctx).await?, Step::Answered))
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(routed) = ctx.routed.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no route decided");
        };
        match upstream::connect::peer(routed, &mut ctx.upstream) {
            Some(mut p) => {
                upstream::pool::hold(session, ctx, &mut p).await?;
                Ok(p)
            }
            None => Error::e_explain(ErrorType::HTTPStatus(503), "no backend left to try"),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(r) = &ctx.routed {
            // Nothing was sent yet: the next backend on the ring may take it.
            if upstream::failure::connect_failed(r, &ctx.upstream) {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &ctx.routed {
            Some(r) => upstream::request::rewrite(req, r),
            None => Error::e_explain(ErrorType::InternalError, "no route decided"),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The retry buffer (the whole body, read in `route`) is replayed here, on every
        // attempt: send the rewritten body instead.
        if let (Some(new), Some(_)) = (ctx.routed.as_ref().and_then(|r| r.new_body.as_ref()), body.as_ref()) {
            *body = Some(new.clone());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        upstream::answer::answered(resp, ctx)
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        response_headers(resp, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        filter_body(body, end_of_stream, ctx);
        Ok(None)
    }

    /// A client that leaves mid-stream is routine for LLM traffic: it is counted
    /// (`mcas_client_cancels_total`) and logged in the access log, not as an ERROR line.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
            && matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match upstream::failure::answer(session, ctx, e).await {
            Ok(status) => status.unwrap_or(0),
            Err(write_err) => {
                log::debug!("could not send error response: {write_err}");
                0
            }
        };
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.upstream.release();
        rate_limit::finish(ctx);
        if ctx.counted_inflight {
            if let Some(m) = metrics() {
                m.inflight.dec();
            }
        }
        if ctx.answered_by_subrequest {
            return; // the subrequest accounted for this request
        }
        let access_log =
            ctx.routed.as_ref().map(|r| r.runtime.log.access_log).unwrap_or_else(|| self.runtime.load().log.access_log);
        account::finish(session, e, ctx, access_log);
    }
}

/// An error out of admission after routing: the route leaves the context (see `Gateway::routed`).
fn drop_route(ctx: &mut Ctx, e: Box<Error>) -> Box<Error> {
    ctx.routed = None;
    e
}

/// What the gateway adds to every upstream response header: request id, rate-limit headers,
/// and the body rewrite's framing. The request id and the rate-limit headers are appended as
/// encoded lines (vendor/patches/0023 and 0024: no map insert, no value built, no call per field); each replaces
/// the upstream's fields of its name, which are rare, so the names are removed only when one
/// pass over the upstream's finds one that may be among them.
fn response_headers(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let header_at = ctx.upstream.header_at;
    let limits = rate_limit::snapshot_at(ctx, || header_at.map_or_else(crate::clock::now_ms, crate::clock::ms_at));
    let with_id = !ctx.request_id.is_empty();
    if resp.headers.keys().any(|n| n.as_str().starts_with(header_names::OWN_ANSWER_PREFIX)) {
        let id = with_id.then_some(&header_names::REQUEST_ID);
        for k in id.into_iter().chain(limits.iter().flat_map(rate_limit::header_names)) {
            resp.remove_header(k.name());
        }
    }
    // One call and one allocation for the lines: the id, then the limits.
    let room = ctx.request_id.len() + 16 + limits.as_ref().map_or(0, |_| rate_limit::APPENDED_BYTES);
    let id = ctx.request_id.as_bytes();
    resp.append_encoded_headers(room, |fields| {
        if with_id {
            fields.field(&header_names::REQUEST_ID, id);
        }
        if let Some(s) = &limits {
            rate_limit::append_headers(fields, s);
        }
    })?;
    if let Some(ids) = ctx.response_ids.as_mut() {
        let replica =
            ctx.routed.as_ref().zip(ctx.upstream.backend.as_ref()).map(|(r, b)| (r.provider.name.to_string(), b.addr));
        ids.response_header(resp, ctx.usage.kind(), replica)?;
    }
    ctx.rewrite.response_header(resp, ctx.usage.kind())
}

/// What the gateway does to every response body chunk: the MCP endpoint rewrite, the usage
/// observer (on the backend's bytes), then the body rewrite.
fn filter_body(body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut Ctx) {
    if let Some(ticket) = ctx.routed.as_ref().and_then(|r| r.inference.as_ref()) {
        // The replica's first bytes end its prefill of this request; its events, how far it is.
        if let Some(b) = body.as_ref() {
            ticket.relayed(b);
        }
    }
    long_lived::response_body(body, end, &mut ctx.streams);
    let hint = ctx.usage.observe(body.as_ref(), end);
    if end {
        // Before the last bytes go out: the client's next request sees these tokens counted.
        rate_limit::charge_tokens(ctx);
    }
    ctx.rewrite.response_body(body, end, ctx.usage.kind(), hint);
    if let Some(ids) = ctx.response_ids.as_mut() {
        ids.response_body(body, end);
    }
}

/// The client's `x-request-id` when it is short and plain, else a fresh one ([`fresh_id_bits`]).
fn request_id(req: &RequestHeader, present: &fields::Present) -> String {
    // Looked up only when the request has one (found in the pass over its names).
    let given = if present.request_id { req.headers.get(header_names::REQUEST_ID.name()) } else { None };
    if let Some(v) = given {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) {
            if let Ok(s) = v.to_str() {
                return s.to_string();
            }
        }
    }
    fresh_request_id(fresh_id_bits())
}

/// The secret of this process's ids, drawn once from the OS-seeded generator.
struct IdKey {
    /// The left half of every id's input: different in every process with overwhelming
    /// probability, so two processes (restarts, instances) never produce the same input.
    prefix: u64,
    /// One key per round of the permutation.
    rounds: [u64; 6],
}

static ID_KEY: once_cell::sync::Lazy<IdKey> =
    once_cell::sync::Lazy::new(|| IdKey { prefix: rand::random(), rounds: rand::random() });

/// Requests numbered in this process.
static ID_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// 128 bits for a fresh request id: (process prefix, request number) through a keyed
/// Feistel permutation. A permutation maps distinct inputs to distinct ids, so ids never
/// repeat within a process (2^64 requests); across processes the random prefixes and keys
/// differ, so a collision has the odds of two random 128-bit values. Without the key the
/// next id is not predictable from the previous ones. Much cheaper than drawing 128 bits
/// from the thread's ChaCha generator on every request.
fn fresh_id_bits() -> u128 {
    let key = &*ID_KEY;
    let n = ID_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    feistel(key, n)
}

fn feistel(key: &IdKey, n: u64) -> u128 {
    let (mut l, mut r) = (key.prefix, n);
    for k in key.rounds {
        (l, r) = (r, l ^ mix(r ^ k));
    }
    (u128::from(l) << 64) | u128::from(r)
}

/// SplitMix64's finaliser: every input bit reaches every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 32 lower-case hex digits, written directly (no formatting machinery per request): two
/// digits per byte from a table.
fn fresh_request_id(n: u128) -> String {
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    let mut digits = [0u8; 32];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    std::str::from_utf8(&digits).map(str::to_owned).unwrap_or_default()
}

pub fn client_ip(session: &Session) -> Option<String> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| crate::addr_text::ip_string(a.ip()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fresh_request_ids_are_32_hex_digits() {
        for n in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(super::fresh_request_id(n), format!("{n:032x}"));
        }
        for i in 0..128 {
            let n = (1u128 << i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834) ^ (u128::MAX >> i);
            assert_eq!(super::fresh_request_id(n), format!("{n:032x}"));
        }
    }

    #[test]
    fn fresh_ids_are_distinct_and_keyed() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::fresh_request_id(super::fresh_id_bits())).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))));
        // Another process (another key and prefix) numbers from 0 too: different ids.
        let a = super::IdKey { prefix: 1, rounds: [1, 2, 3, 4, 5, 6] };
        let b = super::IdKey { prefix: 2, rounds: [1, 2, 3, 4, 5, 6] };
        let c = super::IdKey { prefix: 1, rounds: [7, 2, 3, 4, 5, 6] };
        for n in 0..1000 {
            assert_ne!(super::feistel(&a, n), super::feistel(&b, n));
            assert_ne!(super::feistel(&a, n), super::feistel(&c, n));
            assert_ne!(super::feistel(&a, n), super::feistel(&a, n + 1));
        }
    }
}
