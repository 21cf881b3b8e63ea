//! Account: metrics, access log and token counts once a request ends, however it ended
//! (finished, refused, client gone, upstream failed).

use super::ctx::Ctx;
use crate::observe::access_log::{self, AccessRecord};
use crate::observe::metrics::{metrics, status_class};
use pingora::prelude::*;
use pingora_proxy::Session;

pub fn finish(session: &Session, e: Option<&Error>, ctx: &mut Ctx, access_log: bool) {
    let status = session.response_written().map(|r| r.status.as_u16()).or(ctx.local_status).unwrap_or(0);
    let routed = ctx.routed.as_ref();
    let route = routed.map(|r| &*r.route_label).or(ctx.route_label.as_deref()).unwrap_or("none");
    let provider = routed.map(|r| &*r.provider.name).unwrap_or("none");
    let elapsed = ctx.started.elapsed();
    let ttfb = match (ctx.upstream.chosen_at, ctx.upstream.header_at) {
        (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
        _ => None,
    };
    // A client that went away after the response started is a cancel, not an upstream error.
    let client_gone = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream) && status != 0;
    match routed.and_then(|r| r.metrics()) {
        // Routed: through the series bound to its route and provider.
        Some(bound) => {
            if let Some(c) = bound.requests(status) {
                c.inc();
            }
            if let Some(h) = bound.duration() {
                h.observe(elapsed.as_secs_f64());
            }
            if let (Some(t), Some(h)) = (ttfb, routed.and_then(|r| r.provider_metrics()).and_then(|p| p.ttfb())) {
                h.observe(t.as_secs_f64());
            }
            if client_gone {
                if let Some(c) = bound.cancels() {
                    c.inc();
                }
            }
        }
        // Answered before routing (refusals, local endpoints): by label.
        None => {
            if let Some(m) = metrics() {
                m.requests.with_label_values(&[route, provider, status_class(status)]).inc();
                m.duration.with_label_values(&[route, provider]).observe(elapsed.as_secs_f64());
                if let Some(t) = ttfb {
                    m.upstream_ttfb.with_label_values(&[provider]).observe(t.as_secs_f64());
                }
                if client_gone {
                    m.client_cancels.with_label_values(&[route]).inc();
                }
            }
        }
    }
    let ttft = ctx.usage.first_event_at.map(|t| t.saturating_duration_since(ctx.started));
    let key = routed.map(|r| &*r.key.name).or(ctx.key_name.as_deref());
    if let Some(m) = metrics() {
        if let (Some(t), Some(h)) = (ttft, routed.and_then(|r| r.provider_metrics()).and_then(|p| p.ttft())) {
            h.observe(t.as_secs_f64());
        }
        match (routed, key) {
            (Some(r), _) => r.key.metrics.requests().map_or((), |c| c.inc()),
            // Refused after the key was known (a limit, a policy): by label.
            (None, Some(k)) => m.key_requests.with_label_values(&[k]).inc(),
            (None, None) => {}
        }
    }
    if let (Some(u), Some(r)) = (ctx.usage.usage, routed) {
        let cap = r.runtime.metrics.max_key_model_pairs;
        let model = r.model.as_deref().unwrap_or("unknown");
        r.key.metrics.tokens(model, cap, u.prompt_tokens, u.completion_tokens);
    }
    if !access_log {
        return;
    }
    let req = session.req_header();
    let client_ip = match routed.and_then(|r| r.client_ip.as_deref()) {
        Some(ip) => std::borrow::Cow::Borrowed(ip),
        None => super::client_ip(session).map(std::borrow::Cow::Owned).unwrap_or_default(),
    };
    let record = AccessRecord {
        ts: access_log::now_rfc3339(),
        request_id: &ctx.request_id,
        client_ip: Some(&*client_ip).filter(|ip| !ip.is_empty()),
        method: req.method.as_str(),
        path: req.uri.path(),
        status,
        duration_ms: access_log::Millis::of(elapsed),
        ttfb_ms: ttfb.map(access_log::Millis::of),
        ttft_ms: ttft.map(access_log::Millis::of),
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        key,
        route: Some(route),
        provider: routed.map(|r| &*r.provider.name),
        backend: ctx.upstream.backend.as_ref().map(|b| &*b.addr_text),
        model: routed.and_then(|r| r.model.as_deref()),
        stream: routed.is_some_and(|r| r.stream),
        prompt_tokens: ctx.usage.usage.map(|u| u.prompt_tokens),
        completion_tokens: ctx.usage.usage.map(|u| u.completion_tokens),
        error: e.map(|e| if client_gone { "client closed" } else { e.etype().as_str() }),
        refusal: ctx.refusal,
    };
    access_log::write(&record);
}
