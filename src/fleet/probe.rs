//! Active health checks: one background service for every provider ([`super::ticker`]). Each
//! tick, for every backend whose probe is due, it sends `GET <path>` with the provider's key, Host and (for https) SNI and CA settings.
//! Only a 2xx answer within the timeout counts as good.

use super::health::HealthSettings;
use super::{Backend, Provider};
use crate::clock;
use crate::observe::metrics::metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// How often the runner looks for due probes (the finest useful `interval`).
const TICK: Duration = Duration::from_millis(50);

/// The background service probing every provider's backends.
pub fn service(runtime: Arc<ArcSwap<Runtime>>) -> super::ticker::Ticker {
    super::ticker::Ticker { runtime, every: TICK, start_due: probe_due }
}

fn probe_due(rt: &Runtime) -> bool {
    let now = clock::now_ms();
    let mut any = false;
    for p in &rt.providers {
        let Some(settings) = &p.fleet.health else { continue };
        any = true;
        for b in &p.backends {
            if b.health.claim_probe(now, settings.interval) {
                let (p, b, s) = (p.clone(), b.clone(), settings.clone());
                tokio::spawn(async move {
                    let result = probe(&p, &b, &s).await;
                    record(&p, &b, &s, result);
                });
            }
        }
    }
    any
}

fn record(p: &Provider, b: &Backend, s: &HealthSettings, result: Result<(), String>) {
    if let Err(why) = &result {
        log::debug!("provider {} backend {}: probe failed: {why}", p.name, b.addr);
    }
    if let Some(up) = b.health.record(result.is_ok(), s) {
        let to = if up { "up" } else { "down" };
        match &result {
            Ok(()) => log::info!("provider {} backend {}: healthy again", p.name, b.addr),
            Err(why) => log::warn!("provider {} backend {}: marked down ({why})", p.name, b.addr),
        }
        if let Some(m) = metrics() {
            m.fleet.health_transitions.with_label_values(&[&*p.name, &b.addr.to_string(), to]).inc();
        }
    }
}

/// One probe, addressed as the proxy path would (`backend_http.rs`).
async fn probe(p: &Provider, b: &Backend, s: &HealthSettings) -> Result<(), String> {
    let resp = super::backend_http::get(p, b.addr, &s.path, s.timeout).await?;
    // A server that answers is up unless it failed (5xx) or refuses the provider's key (401/403,
    // so every request would fail). 404 counts as up: MCP servers and hosted APIs have no
    // health path, and an answer still proves the process is serving.
    let status = resp.status();
    if status.is_server_error() || status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        Err(format!("status {}", status.as_u16()))
    } else {
        Ok(())
    }
}
