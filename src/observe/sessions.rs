//! `mcas_backend_sessions{provider,backend}`: MCP sessions this instance opened on each backend
//! and has not seen end (`Backend::sessions`), refreshed with the other backend gauges when
//! `/health` or `/metrics` is read.

use super::metrics::metrics;

pub fn set(provider: &str, backend: &str, sessions: usize) {
    if let Some(m) = metrics() {
        m.backend_sessions.with_label_values(&[provider, backend]).set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }
}
