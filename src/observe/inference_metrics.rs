//! Metrics of `balance: inference` (registered in `metrics.rs`'s one registry): the admission
//! queue's depth, wait times and refusals, and scrape results. Labels: provider names from the
//! config and fixed words.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct InferenceMetrics {
    /// Requests waiting in the admission queue, by provider.
    pub queue_depth: IntGaugeVec,
    /// Time spent in the admission queue by requests that got through, by provider.
    pub queue_wait: HistogramVec,
    /// Requests refused by the admission queue, by provider and reason (`queue_full`, `deadline`).
    pub queue_refusals: IntCounterVec,
    /// Scrapes of replicas' `/metrics`, by provider and result (`ok`, `failed`).
    pub scrapes: IntCounterVec,
}

const WAIT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub fn build(registry: &Registry) -> Result<InferenceMetrics, prometheus::Error> {
    let m = InferenceMetrics {
        queue_depth: IntGaugeVec::new(
            Opts::new("inference_queue_depth", "Requests waiting in the admission queue"),
            &["provider"],
        )?,
        queue_wait: HistogramVec::new(
            HistogramOpts::new("inference_queue_wait_seconds", "Time admitted requests waited in the admission queue")
                .buckets(WAIT_BUCKETS.to_vec()),
            &["provider"],
        )?,
        queue_refusals: IntCounterVec::new(
            Opts::new("inference_queue_refusals_total", "Requests refused by the admission queue, by reason"),
            &["provider", "reason"],
        )?,
        scrapes: IntCounterVec::new(
            Opts::new("inference_scrapes_total", "Scrapes of replica metrics, by result"),
            &["provider", "result"],
        )?,
    };
    super::metrics::register(registry, m.queue_depth.clone())?;
    super::metrics::register(registry, m.queue_wait.clone())?;
    super::metrics::register(registry, m.queue_refusals.clone())?;
    super::metrics::register(registry, m.scrapes.clone())?;
    Ok(m)
}
