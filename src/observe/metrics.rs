//! Every metric the gateway exports, in one registry. Labels are bounded: route patterns,
//! provider and key names from the config, status classes, and model names capped in number.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

pub struct Metrics {
    pub registry: Registry,
    pub fleet: FleetMetrics,
    /// `balance: inference`: admission queue and scrapes.
    pub inference: super::inference_metrics::InferenceMetrics,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    pub inflight: IntGauge,
    pub auth_failures: IntCounterVec,
    pub tokens: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub client_cancels: IntCounterVec,
    pub reloads: IntCounterVec,
    pub backend_up: IntGaugeVec,
    /// 1 while the backend's circuit is open (requests skip it), 0 closed or half-open.
    pub circuit_open: IntGaugeVec,
    /// MCP sessions open on each backend, opened through this instance (`Backend::sessions`),
    /// refreshed with the other backend gauges when `/health` or `/metrics` is read (`observe/admin.rs`).
    pub backend_sessions: IntGaugeVec,
    pub limit_refusals: IntCounterVec,
    pub open_streams: IntGaugeVec,
    pub open_tunnels: IntGaugeVec,
    pub heartbeats: prometheus::IntCounter,
    pub mcp_unknown_sessions: prometheus::IntCounter,
    /// Client connections closed at accept, by reason (`per_ip`: `limits.per_ip.connections`).
    pub connections_refused: IntCounterVec,
    /// Calls to the shared limits store (`limits.store`) that failed or timed out.
    pub limit_store_errors: prometheus::IntCounter,
    /// 1 while the shared limits store answers, 0 during an outage.
    pub limit_store_up: IntGauge,
    /// Requests refused for their framing or header size (400/431), by reason.
    pub malformed_requests: IntCounterVec,
    /// Access log lines dropped because the writer fell behind (stdout slow or its pipe full).
    pub access_log_dropped: prometheus::IntCounter,
    /// Writes to the `log.dir` file that failed (full disk, unwritable directory): lines lost.
    pub log_write_errors: prometheus::IntCounter,
    /// Time from the request header to the first SSE data event of a streamed answer.
    pub ttft: HistogramVec,
    /// Requests answered per key name (after authentication).
    pub key_requests: IntCounterVec,
    /// `providers[].pool`: connections per backend by state (`in_use`, `idle`, `waiting`).
    pub pool_connections: IntGaugeVec,
    /// `providers[].pool`: requests refused with 503, by reason (`queue_full`, `queue_timeout`).
    pub pool_refusals: IntCounterVec,
    /// The (key, model) pairs `tokens` carries, by key name.
    models_seen: Mutex<ModelsSeen>,
}

#[derive(Default)]
struct ModelsSeen {
    by_key: HashMap<String, HashSet<String>>,
    pairs: usize,
}

/// Default of `admin.max_key_model_pairs`: distinct (key, model) label pairs of
/// `mcas_tokens_total`; later pairs count under the model `other`.
pub const DEFAULT_MAX_KEY_MODEL_PAIRS: usize = 256;
/// The largest `admin.max_key_model_pairs` accepted.
pub const MAX_KEY_MODEL_PAIRS: usize = 100_000;

/// The prefix of every metric name (`mcas_…`).
const PREFIX: &str = "mcas";

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
    let fleet = fleet_metrics(&registry)?;
    let inference = super::inference_metrics::build(&registry)?;
    let registry = &registry;
    let requests = IntCounterVec::new(
        Opts::new("requests_total", "Requests answered, by route pattern, provider and status class"),
        &["route", "provider", "status"],
    )?;
    let duration = HistogramVec::new(
        HistogramOpts::new("request_duration_seconds", "Time from request header to last response byte")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["route", "provider"],
    )?;
    let upstream_ttfb = HistogramVec::new(
        HistogramOpts::new("upstream_ttfb_seconds", "Time from choosing the upstream to its response header")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["provider"],
    )?;
    let inflight = IntGauge::new("inflight_requests", "Requests being served now")?;
    let auth_failures =
        IntCounterVec::new(Opts::new("auth_failures_total", "Refused credentials by reason"), &["reason"])?;
    let tokens = IntCounterVec::new(
        Opts::new("tokens_total", "Tokens reported by upstream usage, by key name, model and kind"),
        &["key", "model", "kind"],
    )?;
    let upstream_errors = IntCounterVec::new(
        Opts::new("upstream_errors_total", "Upstream failures by provider and kind"),
        &["provider", "kind"],
    )?;
    let client_cancels = IntCounterVec::new(
        Opts::new("client_cancels_total", "Requests the client abandoned before the response ended"),
        &["route"],
    )?;
    let reloads =
        IntCounterVec::new(Opts::new("config_reloads_total", "Configuration reloads by result"), &["result"])?;
    let backend_up =
        IntGaugeVec::new(Opts::new("backend_up", "1 when the backend is in rotation"), &["provider", "backend"])?;
    let open_streams = IntGaugeVec::new(
        Opts::new("open_streams", "Event streams open now, by route and key name"),
        &["route", "key"],
    )?;
    let open_tunnels = IntGaugeVec::new(
        Opts::new("open_tunnels", "WebSocket tunnels open now, by route and key name"),
        &["route", "key"],
    )?;
    let heartbeats = prometheus::IntCounter::new("sse_heartbeats_total", "Keepalive comments sent on silent streams")?;
    let mcp_unknown_sessions = prometheus::IntCounter::new(
        "mcp_unknown_sessions_total",
        "MCP requests refused with 404: session id forged, stale or of a removed backend",
    )?;
    register(registry, open_streams.clone())?;
    register(registry, open_tunnels.clone())?;
    register(registry, heartbeats.clone())?;
    register(registry, mcp_unknown_sessions.clone())?;
    register(registry, requests.clone())?;
    register(registry, duration.clone())?;
    register(registry, upstream_ttfb.clone())?;
    register(registry, inflight.clone())?;
    register(registry, auth_failures.clone())?;
    register(registry, tokens.clone())?;
    register(registry, upstream_errors.clone())?;
    register(registry, client_cancels.clone())?;
    register(registry, reloads.clone())?;
    register(registry, backend_up.clone())?;
    let circuit_open = IntGaugeVec::new(
        Opts::new("backend_circuit_open", "1 while the backend's circuit breaker is open"),
        &["provider", "backend"],
    )?;
    register(registry, circuit_open.clone())?;
    let backend_sessions = IntGaugeVec::new(
        Opts::new("backend_sessions", "MCP sessions open on the backend, opened through this instance"),
        &["provider", "backend"],
    )?;
    register(registry, backend_sessions.clone())?;
    let limit_refusals = IntCounterVec::new(
        Opts::new("limit_refusals_total", "Requests refused with 429, by limit and key name (\"none\" before auth)"),
        &["reason", "key"],
    )?;
    register(registry, limit_refusals.clone())?;
    let connections_refused = IntCounterVec::new(
        Opts::new("connections_refused_total", "Client connections closed as soon as accepted, by reason"),
        &["reason"],
    )?;
    register(registry, connections_refused.clone())?;
    let limit_store_errors = prometheus::IntCounter::new(
        "limit_store_errors_total",
        "Calls to the shared limits store (limits.store) that failed or timed out",
    )?;
    register(registry, limit_store_errors.clone())?;
    let limit_store_up =
        IntGauge::new("limit_store_up", "1 while the shared limits store answers, 0 during an outage")?;
    register(registry, limit_store_up.clone())?;
    let malformed_requests = IntCounterVec::new(
        Opts::new("malformed_requests_total", "Requests refused for ambiguous framing or oversized headers, by reason"),
        &["reason"],
    )?;
    register(registry, malformed_requests.clone())?;
    let access_log_dropped = prometheus::IntCounter::new(
        "access_log_dropped_total",
        "Access log lines dropped because stdout or the log file could not take them fast enough",
    )?;
    register(registry, access_log_dropped.clone())?;
    let log_write_errors = prometheus::IntCounter::new(
        "log_write_errors_total",
        "Writes to the log.dir file that failed (full disk, unwritable directory); their lines are lost",
    )?;
    register(registry, log_write_errors.clone())?;
    let ttft = HistogramVec::new(
        HistogramOpts::new("ttft_seconds", "Time from request header to the first event of a streamed answer")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["provider"],
    )?;
    register(registry, ttft.clone())?;
    let key_requests = IntCounterVec::new(Opts::new("key_requests_total", "Requests answered, by key name"), &["key"])?;
    register(registry, key_requests.clone())?;
    let pool_connections = IntGaugeVec::new(
        Opts::new(
            "upstream_pool_connections",
            "Connections per pooled backend: in_use, idle (kept), waiting (queued requests)",
        ),
        &["provider", "backend", "state"],
    )?;
    register(registry, pool_connections.clone())?;
    let pool_refusals = IntCounterVec::new(
        Opts::new("upstream_pool_refusals_total", "Requests refused (503) by a full backend pool, by reason"),
        &["provider", "backend", "reason"],
    )?;
    register(registry, pool_refusals.clone())?;
    Ok(Metrics {
        registry: registry.clone(),
        fleet,
        inference,
        requests,
        duration,
        upstream_ttfb,
        inflight,
        auth_failures,
        tokens,
        upstream_errors,
        client_cancels,
        reloads,
        backend_up,
        circuit_open,
        backend_sessions,
        limit_refusals,
        open_streams,
        open_tunnels,
        heartbeats,
        mcp_unknown_sessions,
        connections_refused,
        limit_store_errors,
        limit_store_up,
        malformed_requests,
        access_log_dropped,
        log_write_errors,
        ttft,
        key_requests,
        pool_connections,
        pool_refusals,
        models_seen: Mutex::new(ModelsSeen::default()),
    })
}

/// Backend selection, retries, circuit and health transitions (labels: provider and backend
/// address from the config, states from a fixed set).
pub struct FleetMetrics {
    pub backend_selections: IntCounterVec,
    pub retries: IntCounterVec,
    pub circuit_transitions: IntCounterVec,
    pub health_transitions: IntCounterVec,
    /// DNS discovery (src/fleet/discover/status.rs): results are a fixed set.
    pub discovery_resolutions: IntCounterVec,
}

fn fleet_metrics(registry: &Registry) -> Result<FleetMetrics, prometheus::Error> {
    let m = FleetMetrics {
        backend_selections: IntCounterVec::new(
            Opts::new("backend_selections_total", "Requests sent to each backend (retries included)"),
            &["provider", "backend"],
        )?,
        retries: IntCounterVec::new(
            Opts::new("upstream_retries_total", "Requests retried on another backend after a failed connect"),
            &["provider"],
        )?,
        circuit_transitions: IntCounterVec::new(
            Opts::new("circuit_transitions_total", "Circuit breaker state changes by the state entered"),
            &["provider", "backend", "state"],
        )?,
        health_transitions: IntCounterVec::new(
            Opts::new("health_transitions_total", "Active health changes by the state entered (up, down)"),
            &["provider", "backend", "state"],
        )?,
        discovery_resolutions: IntCounterVec::new(
            Opts::new(
                "discovery_resolutions_total",
                "DNS resolutions of discovering providers (changed, unchanged, empty, failed)",
            ),
            &["provider", "result"],
        )?,
    };
    register(registry, m.backend_selections.clone())?;
    register(registry, m.retries.clone())?;
    register(registry, m.circuit_transitions.clone())?;
    register(registry, m.health_transitions.clone())?;
    register(registry, m.discovery_resolutions.clone())?;
    Ok(m)
}

/// The name of every metric family registered, whether it has a series yet or not (the
/// registry's own listing leaves out families without one).
static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub(crate) fn register<C: prometheus::core::Collector + 'static>(
    registry: &Registry,
    c: C,
) -> Result<(), prometheus::Error> {
    // The registry adds its prefix when it renders; the collectors' names lack it.
    let names = c.desc().iter().map(|d| format!("{PREFIX}_{}", d.fq_name)).collect::<Vec<_>>();
    registry.register(Box::new(c))?;
    NAMES.lock().unwrap_or_else(|p| p.into_inner()).extend(names);
    Ok(())
}

/// Every metric family the gateway exports (`mcas_…`), for checks of dashboards and alert
/// rules written against them.
pub fn family_names() -> Vec<String> {
    let _ = metrics();
    NAMES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

static METRICS: Lazy<Option<Metrics>> = Lazy::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        log::error!("metrics disabled: {e}");
        None
    }
});

/// The registry, or `None` if it could not be built (logged once; requests are unaffected).
pub fn metrics() -> Option<&'static Metrics> {
    METRICS.as_ref()
}

impl Metrics {
    /// The model as a label value beside `key`: the name itself for the first `cap` distinct
    /// (key, model) pairs (`admin.max_key_model_pairs`), else "other", so the series of
    /// `mcas_tokens_total` stay bounded however many keys and models there are.
    pub fn model_label<'a>(&self, key: &str, model: &'a str, cap: usize) -> &'a str {
        let Ok(mut seen) = self.models_seen.lock() else { return "other" };
        if seen.by_key.get(key).is_some_and(|m| m.contains(model)) {
            return model;
        }
        if seen.pairs >= cap {
            return "other";
        }
        seen.pairs += 1;
        seen.by_key.entry(key.to_string()).or_default().insert(model.to_string());
        model
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_model_pairs_are_capped_with_an_other_bucket() {
        let m = metrics().unwrap();
        // Only this test adds pairs in this process.
        let cap = m.models_seen.lock().unwrap().pairs + 2;
        assert_eq!(m.model_label("cap-k1", "a", cap), "a");
        assert_eq!(m.model_label("cap-k2", "a", cap), "a");
        assert_eq!(m.model_label("cap-k2", "b", cap), "other");
        assert_eq!(m.model_label("cap-k3", "a", cap), "other");
        assert_eq!(m.model_label("cap-k1", "a", cap), "a");
        assert_eq!(m.model_label("cap-k1", "a", 0), "a", "a pair already labelled keeps its name");
    }
}
