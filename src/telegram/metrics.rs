//! Every metric of the runner, in its own registry (not the process default, which the
//! gateway's library code may share). Labels are bounded enums, never chat or user ids.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Updates by what was done with them: ask, command, ignored, refused.
    pub updates: IntCounterVec,
    /// Updates fully handled and confirmed in the ledger.
    pub handled: IntCounter,
    /// Failures by source: telegram, gateway, state.
    pub errors: IntCounterVec,
    /// `getUpdates` calls by result: ok, error.
    pub polls: IntCounterVec,
    /// Gateway completions by outcome: ok, rate_limited, unauthorized, model, unavailable, stream.
    pub completions: IntCounterVec,
    /// Seconds from the user's message to the first token.
    pub first_token: Histogram,
    /// Seconds from the user's message to the finished reply.
    pub reply: Histogram,
}

const SECONDS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let updates = counter_vec("mcas_telegram_updates_total", "Updates received, by action taken", "action")?;
        let errors = counter_vec("mcas_telegram_errors_total", "Failures by source", "source")?;
        let polls = counter_vec("mcas_telegram_polls_total", "getUpdates calls", "result")?;
        let completions =
            counter_vec("mcas_telegram_completions_total", "Gateway chat completions by outcome", "outcome")?;
        let handled = IntCounter::new("mcas_telegram_messages_handled_total", "Updates handled and confirmed")?;
        registry.register(Box::new(handled.clone()))?;
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(SECONDS.to_vec()))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let first_token = histogram("mcas_telegram_first_token_seconds", "Time from message to first answer token")?;
        let reply = histogram("mcas_telegram_reply_seconds", "Time from message to finished reply")?;
        Ok(Metrics { registry, updates, handled, errors, polls, completions, first_token, reply })
    }

    pub fn error(&self, source: &str) {
        self.errors.with_label_values(&[source]).inc();
    }

    pub fn error_count(&self) -> u64 {
        ["telegram", "gateway", "state"].iter().map(|s| self.errors.with_label_values(&[s]).get()).sum()
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
