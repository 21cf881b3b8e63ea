//! `mcas_backend_sessions{provider,backend}`: MCP sessions this instance opened on each backend
//! and has not seen end (`Backend::sessions`), refreshed with the other backend gauges when
//! `/health` or `/metrics` is read. Registered on first use, in the one registry.

use super::metrics::metrics;
use prometheus::{IntGaugeVec, Opts};
use std::sync::OnceLock;

static GAUGE: OnceLock<Option<IntGaugeVec>> = OnceLock::new();

fn gauge() -> Option<&'static IntGaugeVec> {
    GAUGE
        .get_or_init(|| {
            let m = metrics()?;
            let g = IntGaugeVec::new(
                Opts::new("backend_sessions", "MCP sessions open on the backend, opened through this instance"),
                &["provider", "backend"],
            )
            .ok()?;
            super::metrics::register(&m.registry, g.clone()).ok()?;
            Some(g)
        })
        .as_ref()
}

pub fn set(provider: &str, backend: &str, sessions: usize) {
    if let Some(g) = gauge() {
        g.with_label_values(&[provider, backend]).set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }
}
