//! Prometheus metrics of one replica, in a registry the replica owns (three replicas in one
//! process must not share counters). Names follow vLLM where vLLM has one.

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::route::Endpoint;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests{endpoint, "200"}` of the hot endpoints, resolved once so they take no lock
    /// (indexed by [`Endpoint::index`]; `None` elsewhere, to export no empty series).
    ok: Vec<Option<IntCounter>>,
    /// Completion requests between arrival and the end (or drop) of their body.
    pub running: IntGauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    /// Prompt tokens looked up in the prefix cache, and those found.
    pub prefix_queries: IntCounter,
    pub prefix_hits: IntCounter,
    /// WebSocket close frames received, by close code.
    pub ws_closes: IntCounterVec,
    /// The replica model's queue, KV use and preemptions (zero while the model is off).
    pub engine: super::engine::EngineGauges,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("mcas_sim_requests_total", "HTTP requests answered, by endpoint and status"),
            &["endpoint", "status"],
        )?;
        let running =
            IntGauge::new("vllm:num_requests_running", "Completion requests in flight (until their body ends)")?;
        let prompt_tokens = IntCounter::new("vllm:prompt_tokens_total", "Prompt tokens")?;
        let generation_tokens = IntCounter::new("vllm:generation_tokens_total", "Completion tokens produced")?;
        let prefix_queries =
            IntCounter::new("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache")?;
        let prefix_hits = IntCounter::new("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache")?;
        let engine = super::engine::EngineGauges {
            running: running.clone(),
            waiting: IntGauge::new("vllm:num_requests_waiting", "Requests waiting to be scheduled")?,
            kv_usage: Gauge::new("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full")?,
            preemptions: IntCounter::new("vllm:num_preemptions_total", "Sequences preempted")?,
        };
        registry.register(Box::new(engine.waiting.clone()))?;
        registry.register(Box::new(engine.kv_usage.clone()))?;
        registry.register(Box::new(engine.preemptions.clone()))?;
        let ws_closes = IntCounterVec::new(
            Opts::new("mcas_sim_ws_closes_total", "WebSocket close frames received, by close code"),
            &["code"],
        )?;
        registry.register(Box::new(ws_closes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(prompt_tokens.clone()))?;
        registry.register(Box::new(generation_tokens.clone()))?;
        registry.register(Box::new(prefix_queries.clone()))?;
        registry.register(Box::new(prefix_hits.clone()))?;
        let ok = Endpoint::ALL
            .iter()
            .map(|&e| {
                matches!(e, Endpoint::Chat | Endpoint::Completions | Endpoint::Models)
                    .then(|| requests.with_label_values(&[e.label(), "200"]))
            })
            .collect();
        Ok(Metrics {
            registry,
            requests,
            ok,
            running,
            prompt_tokens,
            generation_tokens,
            prefix_queries,
            prefix_hits,
            ws_closes,
            engine,
        })
    }

    /// Counts one answered request (at the time its head is sent).
    pub fn answered(&self, endpoint: Endpoint, status: u16) {
        match self.ok.get(endpoint.index()) {
            Some(Some(c)) if status == 200 => c.inc(),
            _ => self.requests.with_label_values(&[endpoint.label(), &status.to_string()]).inc(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        // Encoding into a Vec cannot fail for well-formed families; an error leaves what was
        // written so far, which is still better than no answer.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("metrics encoding failed: {e}");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_do_not_share_counters() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.answered(Endpoint::Chat, 200);
        a.answered(Endpoint::Chat, 500);
        let text = String::from_utf8(a.render()).unwrap();
        assert!(text.contains("mcas_sim_requests_total{endpoint=\"chat_completions\",status=\"500\"} 1"));
        assert!(text.contains("vllm:num_requests_running 0"));
        for name in ["vllm:num_requests_waiting 0", "vllm:kv_cache_usage_perc 0", "vllm:num_preemptions_total 0"] {
            assert!(text.contains(name), "{name}");
        }
        let text = String::from_utf8(b.render()).unwrap();
        assert!(text.contains("mcas_sim_requests_total{endpoint=\"chat_completions\",status=\"200\"} 0"));
    }
}
