//! What the dashboard shows of the metric registry: one [`Sample`] of the counters and
//! histograms it needs, summed over labels it does not show, and what two samples say about
//! the time between them (rates, latency percentiles).

use prometheus::proto::{MetricFamily, MetricType};
use std::collections::BTreeMap;
use std::time::Instant;

/// A histogram merged over its labels: bucket upper bounds (seconds) and cumulative counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub total: u64,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// `mcas_requests_total` by status class.
    pub requests: BTreeMap<String, f64>,
    pub tokens_in: f64,
    pub tokens_out: f64,
    /// `mcas_key_requests_total` and tokens (in + out) by key name.
    pub key_requests: BTreeMap<String, f64>,
    pub key_tokens: BTreeMap<String, f64>,
    pub duration: Hist,
    pub ttft: Hist,
    pub upstream_ttfb: Hist,
    pub inflight: f64,
    pub open_streams: f64,
    pub open_tunnels: f64,
    /// Gauges of waiting requests (names with `queue` or `waiting`), summed over labels:
    /// shown only when some part of the gateway exports one.
    pub queues: BTreeMap<String, f64>,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value()).unwrap_or("")
}

fn merge(h: &mut Hist, f: &MetricFamily) {
    for m in f.get_metric() {
        let hist = m.get_histogram();
        let buckets = hist.get_bucket();
        if h.bounds.is_empty() {
            h.bounds = buckets.iter().map(|b| b.upper_bound()).collect();
            h.counts = vec![0; buckets.len()];
        }
        if buckets.len() == h.counts.len() {
            for (c, b) in h.counts.iter_mut().zip(buckets) {
                *c += b.cumulative_count();
            }
        }
        h.total += hist.get_sample_count();
    }
}

impl Sample {
    pub fn of(families: &[MetricFamily], at: Instant) -> Sample {
        let mut s = Sample {
            at,
            requests: BTreeMap::new(),
            tokens_in: 0.0,
            tokens_out: 0.0,
            key_requests: BTreeMap::new(),
            key_tokens: BTreeMap::new(),
            duration: Hist::default(),
            ttft: Hist::default(),
            upstream_ttfb: Hist::default(),
            inflight: 0.0,
            open_streams: 0.0,
            open_tunnels: 0.0,
            queues: BTreeMap::new(),
        };
        for f in families {
            let sum = || f.get_metric().iter().map(|m| m.get_gauge().value()).sum::<f64>();
            match f.name() {
                "mcas_requests_total" => {
                    for m in f.get_metric() {
                        *s.requests.entry(label(m, "status").to_string()).or_default() += m.get_counter().value();
                    }
                }
                "mcas_tokens_total" => {
                    for m in f.get_metric() {
                        let v = m.get_counter().value();
                        match label(m, "kind") {
                            "prompt" => s.tokens_in += v,
                            _ => s.tokens_out += v,
                        }
                        *s.key_tokens.entry(label(m, "key").to_string()).or_default() += v;
                    }
                }
                "mcas_key_requests_total" => {
                    for m in f.get_metric() {
                        *s.key_requests.entry(label(m, "key").to_string()).or_default() += m.get_counter().value();
                    }
                }
                "mcas_request_duration_seconds" => merge(&mut s.duration, f),
                "mcas_ttft_seconds" => merge(&mut s.ttft, f),
                "mcas_upstream_ttfb_seconds" => merge(&mut s.upstream_ttfb, f),
                "mcas_inflight_requests" => s.inflight = sum(),
                "mcas_open_streams" => s.open_streams = sum(),
                "mcas_open_tunnels" => s.open_tunnels = sum(),
                name if f.get_field_type() == MetricType::GAUGE
                    && (name.contains("queue") || name.contains("waiting")) =>
                {
                    s.queues.insert(name.to_string(), sum());
                }
                _ => {}
            }
        }
        s
    }
}

/// Per second from `a` to `b` of a counter (a counter reset counts as zero).
pub fn rate(a: f64, b: f64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (b - a).max(0.0) / secs
}

/// The `q` quantile (0..1) of the observations between `a` and `b`, in seconds, interpolated
/// linearly inside its bucket like Prometheus' `histogram_quantile`; `None` without any.
pub fn quantile(a: &Hist, b: &Hist, q: f64) -> Option<f64> {
    let base = |i: usize| if a.counts.len() == b.counts.len() { a.counts[i] } else { 0 };
    let counts: Vec<u64> = (0..b.counts.len()).map(|i| b.counts[i].saturating_sub(base(i))).collect();
    let total = b.total.saturating_sub(if a.counts.len() == b.counts.len() { a.total } else { 0 });
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        let upper = b.bounds[i];
        if c as f64 >= rank {
            let inside = (c - below) as f64;
            let frac = if inside > 0.0 { (rank - below as f64) / inside } else { 1.0 };
            return Some(lower + (upper - lower) * frac.clamp(0.0, 1.0));
        }
        lower = upper;
        below = c;
    }
    // Above the last bucket: its bound is the best the histogram knows.
    b.bounds.last().copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hist(counts: &[u64]) -> Hist {
        Hist { bounds: vec![0.1, 0.2, 0.4], counts: counts.to_vec(), total: *counts.last().unwrap() }
    }

    #[test]
    fn quantiles_come_from_the_observations_between_two_samples() {
        let a = hist(&[100, 100, 100]);
        // Since `a`: 10 observations ≤ 0.1 s, 10 in (0.2, 0.4].
        let b = hist(&[110, 110, 120]);
        assert!((quantile(&a, &b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&a, &b, 0.25).unwrap() - 0.05).abs() < 1e-9);
        assert!((quantile(&a, &b, 0.75).unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(quantile(&b, &b, 0.5), None, "no observation in the window");
        assert!((quantile(&Hist::default(), &b, 1.0).unwrap() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(10.0, 30.0, 2.0), 10.0);
        assert_eq!(rate(30.0, 10.0, 2.0), 0.0);
        assert_eq!(rate(0.0, 10.0, 0.0), 0.0);
    }

    #[test]
    fn a_sample_sums_the_registry_over_labels() {
        let r = prometheus::Registry::new_custom(Some("mcas".into()), None).unwrap();
        let req = prometheus::IntCounterVec::new(
            prometheus::Opts::new("requests_total", "r"),
            &["route", "provider", "status"],
        )
        .unwrap();
        let q = prometheus::IntGaugeVec::new(prometheus::Opts::new("queue_depth", "q"), &["provider"]).unwrap();
        r.register(Box::new(req.clone())).unwrap();
        r.register(Box::new(q.clone())).unwrap();
        req.with_label_values(&["/v1/*", "a", "2xx"]).inc_by(3);
        req.with_label_values(&["/v1/*", "b", "2xx"]).inc_by(2);
        req.with_label_values(&["/v1/*", "b", "5xx"]).inc();
        q.with_label_values(&["a"]).set(4);
        let s = Sample::of(&r.gather(), Instant::now());
        assert_eq!(s.requests["2xx"], 5.0);
        assert_eq!(s.requests["5xx"], 1.0);
        assert_eq!(s.queues["mcas_queue_depth"], 4.0);
    }
}
