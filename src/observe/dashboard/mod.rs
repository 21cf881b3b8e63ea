//! `GET /metrics/dashboard`: a live page for operators, compiled into the binary (no CDN, no
//! external font or script). The page (dashboard.html, dashboard.js, dashboard.css) polls
//! `GET /metrics/dashboard.json` every second; the rates and percentiles in that JSON are
//! computed here from a small ring of samples of the metric registry, taken every second by a
//! background service, so even the first answer after traffic shows them.

pub mod sample;

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sample::{quantile, rate, Hist, Sample};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const HTML: &str = include_str!("dashboard.html");
pub const JS: &str = include_str!("dashboard.js");
pub const CSS: &str = include_str!("dashboard.css");

/// Rates and percentiles cover about this much time (or what there is since start).
const WINDOW: Duration = Duration::from_secs(10);
/// Samples kept: a little more than one window at one per second.
const RING: usize = 16;
/// Keys listed, by traffic.
const TOP_KEYS: usize = 10;

static SAMPLES: Lazy<Mutex<VecDeque<Sample>>> = Lazy::new(|| Mutex::new(VecDeque::with_capacity(RING)));

fn take() -> Option<Sample> {
    let m = super::metrics::metrics()?;
    Some(Sample::of(&m.registry.gather(), Instant::now()))
}

/// Adds a sample of the registry now to the ring.
pub fn record() {
    let Some(s) = take() else { return };
    let mut ring = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == RING {
        ring.pop_front();
    }
    ring.push_back(s);
}

/// Samples the registry every second for the dashboard's rates.
pub struct SamplerService;

#[async_trait]
impl BackgroundService for SamplerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => record(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The dashboard's JSON: `providers` as in `/health` (addresses, health, circuit, in-flight,
/// and what else the fleet reports), the rest from the registry.
pub fn snapshot(providers: Value) -> Value {
    let Some(now) = take() else { return json!({"providers": providers}) };
    let base = {
        let ring = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
        // The newest sample at least a window old, else the oldest there is.
        ring.iter().rev().find(|s| now.at.duration_since(s.at) >= WINDOW).or(ring.front()).cloned()
    };
    let mut out = json!({
        "inflight": now.inflight,
        "open_streams": now.open_streams,
        "open_tunnels": now.open_tunnels,
        "providers": providers,
    });
    if !now.queues.is_empty() {
        out["queues"] = json!(now.queues);
    }
    if let (Some(base), Some(o)) = (base, out.as_object_mut()) {
        o.extend(window(&base, &now));
    }
    out
}

fn percentiles(a: &Hist, b: &Hist) -> Value {
    let ms = |q| quantile(a, b, q).map(|s| (s * 1000.0 * 100.0).round() / 100.0);
    json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99)})
}

/// What happened between `a` and `b`: rates per second and latency percentiles.
fn window(a: &Sample, b: &Sample) -> serde_json::Map<String, Value> {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let by_class: serde_json::Map<String, Value> = b
        .requests
        .iter()
        .map(|(class, v)| (class.clone(), json!(rate(a.requests.get(class).copied().unwrap_or(0.0), *v, secs))))
        .collect();
    let total: f64 = by_class.values().filter_map(Value::as_f64).sum();
    let errors: f64 = ["5xx", "none"].iter().filter_map(|c| by_class.get(*c).and_then(Value::as_f64)).sum();
    let mut keys: Vec<(String, f64, f64)> = b
        .key_requests
        .iter()
        .map(|(k, v)| {
            let req = rate(a.key_requests.get(k).copied().unwrap_or(0.0), *v, secs);
            let tok =
                rate(a.key_tokens.get(k).copied().unwrap_or(0.0), b.key_tokens.get(k).copied().unwrap_or(0.0), secs);
            (k.clone(), req, tok)
        })
        .collect();
    keys.sort_by(|x, y| y.1.total_cmp(&x.1).then(y.2.total_cmp(&x.2)).then(x.0.cmp(&y.0)));
    keys.truncate(TOP_KEYS);
    let mut m = serde_json::Map::new();
    m.insert("window_seconds".into(), json!(secs));
    m.insert("requests_per_second".into(), json!(total));
    m.insert("requests_per_second_by_class".into(), Value::Object(by_class));
    m.insert("error_ratio".into(), json!(if total > 0.0 { errors / total } else { 0.0 }));
    m.insert("tokens_in_per_second".into(), json!(rate(a.tokens_in, b.tokens_in, secs)));
    m.insert("tokens_out_per_second".into(), json!(rate(a.tokens_out, b.tokens_out, secs)));
    m.insert("latency_ms".into(), percentiles(&a.duration, &b.duration));
    m.insert("ttft_ms".into(), percentiles(&a.ttft, &b.ttft));
    m.insert("upstream_ttfb_ms".into(), percentiles(&a.upstream_ttfb, &b.upstream_ttfb));
    m.insert(
        "top_keys".into(),
        keys.into_iter()
            .map(|(k, r, t)| json!({"name": k, "requests_per_second": r, "tokens_per_second": t}))
            .collect(),
    );
    m
}
