//! `balance: inference` on the request path: what the request asks of the fleet (its prompt
//! blocks and estimated tokens, from the body the route step already read), and the wait in
//! the provider's admission queue when no replica has room (a free seat, and not saturated).
//! The scoring, the index and the queue itself are in `fleet/inference/`.

use super::ctx::Routed;
use crate::error::GatewayError;
use crate::fleet::inference::{prefix_index, Demand, Ticket, DEFAULT_MAX_TOKENS};
use crate::fleet::Provider;
use crate::observe::metrics::metrics;
use crate::request_body::Scan;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use std::sync::Arc;

/// Seconds a refused client is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 1;

/// The request's ticket, for providers with `balance: inference` (none for others).
pub fn ticket(provider: &Provider, scan: &Scan, body: Option<&Bytes>, model: Option<&str>) -> Option<Arc<Ticket>> {
    let state = provider.inference.clone()?;
    let prompt = body.zip(scan.prompt.clone()).and_then(|(b, r)| b.get(r)).unwrap_or(b"");
    let blocks = prefix_index::block_hashes(model.unwrap_or(""), prompt);
    // The sim's and most tokenizers' rule of thumb: about 4 bytes a token.
    let prompt_tokens = prompt.len() as u64 / 4;
    let tokens = prompt_tokens + scan.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    Some(Arc::new(Ticket::new(state, Demand { blocks, prompt_tokens, tokens })))
}

/// Waits in the admission queue if the request must; `Err` from Pingora when the client left
/// while waiting (its place is freed as the wait is dropped).
pub async fn admit(session: &mut Session, routed: &Routed) -> Result<Result<(), GatewayError>> {
    let Some(ticket) = routed.inference.as_ref() else { return Ok(Ok(())) };
    let (state, provider) = (&ticket.state, &routed.provider);
    let now = crate::clock::now_ms();
    let usable = |i: usize| provider.backends.get(i).is_some_and(|b| provider.usable(b, now));
    if !state.must_queue(usable) {
        return Ok(Ok(()));
    }
    let m = metrics().map(|m| &m.inference);
    let depth = m.map(|m| m.queue_depth.with_label_values(&[&*provider.name]));
    depth.iter().for_each(|d| d.inc());
    let affine = state.affine(&ticket.demand);
    let wait = state.queue.wait(routed.key.name.clone(), routed.key.priority, affine);
    tokio::pin!(wait);
    let mut watch = true;
    let waited = loop {
        tokio::select! {
            r = &mut wait => break r,
            // The body was read whole: the next read only returns when the client closes
            // (or pipelines, after which it is no longer watched).
            r = session.downstream_session.read_body_or_idle(true), if watch => match r {
                Err(e) => {
                    depth.iter().for_each(|d| d.dec());
                    return Err(e);
                }
                Ok(_) => watch = false,
            },
        }
    };
    depth.iter().for_each(|d| d.dec());
    match waited {
        Ok(granted) => {
            if let Some(m) = m {
                m.queue_wait.with_label_values(&[&*provider.name]).observe(granted.waited.as_secs_f64());
            }
            ticket.granted(granted);
            Ok(Ok(()))
        }
        Err(refusal) => {
            if let Some(m) = m {
                m.queue_refusals.with_label_values(&[&*provider.name, refusal.as_str()]).inc();
            }
            let why = match refusal {
                crate::fleet::inference::queue::Refusal::Full => "the admission queue is full",
                crate::fleet::inference::queue::Refusal::Deadline => "no replica came free before the queue deadline",
            };
            Ok(Err(GatewayError::Overloaded(format!("every replica is saturated: {why}"), RETRY_AFTER_SECS)))
        }
    }
}
