//! What discovery last did for each provider, for `/health`, and its counter
//! `mcas_discovery_resolutions_total{provider,result}` (`result`: `changed`, `unchanged`,
//! `empty`, `failed`).

use super::Discover;
use crate::clock;
use crate::observe::metrics::metrics;
use once_cell::sync::Lazy;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

/// The result of one resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new set of addresses was swapped in.
    Changed,
    /// The same addresses as the running set.
    Unchanged,
    /// An answer with no address: the last good set stays.
    Empty,
    /// No answer (timeout, refused, no such name): the last good set stays.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Empty => "empty",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Status {
    target: String,
    resolver: Option<String>,
    last_ok_ms: Option<u64>,
    last_change_ms: Option<u64>,
    failures: u64,
    failures_in_a_row: u64,
    last_error: Option<String>,
    last_outcome: Option<Outcome>,
}

static STATUS: Lazy<Mutex<HashMap<String, Status>>> = Lazy::new(Default::default);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Status>) -> R) -> R {
    f(&mut STATUS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Counts one resolution of `provider`; `error` says why it failed or was empty.
pub fn record(provider: &str, d: &Discover, outcome: Outcome, error: Option<String>) {
    if let Some(m) = metrics() {
        m.fleet.discovery_resolutions.with_label_values(&[provider, outcome.as_str()]).inc();
    }
    let now = clock::now_ms();
    with(|all| {
        let s = all.entry(provider.to_string()).or_default();
        s.target = d.query.to_string();
        s.resolver = d.resolver.map(|r| r.to_string());
        s.last_outcome = Some(outcome);
        match outcome {
            Outcome::Changed | Outcome::Unchanged => {
                s.last_ok_ms = Some(now);
                s.failures_in_a_row = 0;
                s.last_error = None;
                if outcome == Outcome::Changed {
                    s.last_change_ms = Some(now);
                }
            }
            Outcome::Empty | Outcome::Failed => {
                s.failures += 1;
                s.failures_in_a_row += 1;
                s.last_error = error;
            }
        }
    });
}

/// Drops the entry of a provider no longer discovered.
pub fn forget(provider: &str) {
    with(|all| all.remove(provider));
}

/// The `discovery` object of a provider in `/health`; `None` before its first resolution.
pub fn snapshot(provider: &str) -> Option<serde_json::Value> {
    let s = with(|all| all.get(provider).cloned())?;
    let now = clock::now_ms();
    let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t) as f64 / 1000.0);
    Some(json!({
        "target": s.target,
        "resolver": s.resolver.unwrap_or_else(|| "system".to_string()),
        "last_result": s.last_outcome.map(Outcome::as_str),
        "last_success_seconds_ago": ago(s.last_ok_ms),
        "last_change_seconds_ago": ago(s.last_change_ms),
        "failures": s.failures,
        "consecutive_failures": s.failures_in_a_row,
        "last_error": s.last_error,
    }))
}
