//! The scraper of `balance: inference`: one background service (`fleet/ticker.rs`); every
//! tick, for each provider whose round is due, it spawns one task that fetches `scrape.path`
//! from each of its backends with the provider's key. Answers are read bounded ([`MAX_BYTES`], within the interval but at least
//! [`MIN_TIMEOUT`] and at most [`MAX_TIMEOUT`]; a provider's next round waits for the last
//! one to end); anything else than a 2xx Prometheus text with the queue and KV series
//! counts as a failure, and repeated failures mark the replica stale (see `super`), never an
//! error on the request path. The same service runs the adapter rounds of providers with
//! `lora` (`fleet/lora/learn.rs`, through [`fetch`]).

use super::{InferenceState, Scraped};
use crate::clock;
use crate::fleet::{prom_text, Provider};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// Largest `/metrics` answer read (vLLM's is about 50 KiB with histograms).
pub const MAX_BYTES: usize = 1 << 20;
/// Longest a scrape may take, whatever the interval.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a scrape always gets (a busy host answers a short interval late, not never).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the service looks for due rounds.
const TICK: Duration = Duration::from_millis(20);

/// The background service running every provider's scrape (and adapter) rounds.
pub fn service(runtime: Arc<ArcSwap<Runtime>>) -> crate::fleet::ticker::Ticker {
    crate::fleet::ticker::Ticker { runtime, every: TICK, start_due }
}

fn start_due(rt: &Runtime) -> bool {
    let now = clock::now_ms();
    let mut any = false;
    for p in &rt.providers {
        any |= p.lora.is_some() || p.inference.is_some();
        if let Some(lora) = p.lora.clone().filter(|l| l.claim_round(now)) {
            let p = p.clone();
            tokio::spawn(async move {
                crate::fleet::lora::learn::round(&p, &lora).await;
                lora.round_done();
            });
        }
        let Some(state) = p.inference.clone() else { continue };
        if state.claim_scrape(now) {
            let p = p.clone();
            tokio::spawn(async move {
                round(&p, &state).await;
                state.round_done();
            });
        }
    }
    any
}

/// Scrapes every backend of `p` at once, records the results, and lets waiters go where
/// there is room.
pub async fn round(p: &Provider, state: &InferenceState) {
    let timeout = state.settings.scrape_interval.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
    let path = &state.settings.scrape_path;
    state.replicas.iter().for_each(super::ReplicaLoad::scrape_started);
    let fetches = p.backends.iter().map(|b| fetch(p, b.addr, path, timeout));
    let results = futures_util::future::join_all(fetches).await;
    for (i, ((b, load), result)) in p.backends.iter().zip(&state.replicas).zip(results).enumerate() {
        if let (Some(lora), Ok(text)) = (&p.lora, &result) {
            if let Some(replica) = lora.replicas.get(i) {
                crate::fleet::lora::learn::record_hot(p, b.addr, replica, crate::fleet::lora::parse::lora_info(text));
            }
        }
        let scraped = result.and_then(|text| parse(&text));
        match &scraped {
            Err(why) if !load.is_stale() => log::warn!("provider {} backend {}: scrape failed: {why}", p.name, b.addr),
            Ok(_) if load.is_stale() => log::debug!("provider {} backend {}: scraped", p.name, b.addr),
            _ => {}
        }
        if let Some(m) = crate::observe::metrics::metrics() {
            m.inference.scrapes.with_label_values(&[&*p.name, if scraped.is_ok() { "ok" } else { "failed" }]).inc();
        }
        load.record(scraped.ok());
    }
    let now = clock::now_ms();
    // As many as the replicas take before they are saturated again.
    state.release_room(|i| p.backends.get(i).is_some_and(|b| p.usable(b, now)));
}

/// One backend's metrics text, read up to [`MAX_BYTES`].
pub async fn fetch(p: &Provider, addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    crate::fleet::backend_http::get_text(p, addr, path, timeout, MAX_BYTES).await
}

/// Reads the queue and KV series from Prometheus text, summing over label sets (one series
/// per model or engine). `vllm:gpu_cache_usage_perc` is vLLM's older name of the KV use.
/// Missing waiting or KV series, or a value that is not a finite number ≥ 0, fails.
pub fn parse(text: &str) -> Result<Scraped, String> {
    let (mut running, mut waiting, mut kv, mut kv_series) = (None, None, None, 0u32);
    for sample in prom_text::samples(text) {
        let slot = match sample.name {
            "vllm:num_requests_running" => &mut running,
            "vllm:num_requests_waiting" => &mut waiting,
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                kv_series += 1;
                &mut kv
            }
            _ => continue,
        };
        let (_, value) = sample.split()?;
        let value =
            prom_text::number(value).filter(|v| *v >= 0.0).ok_or_else(|| format!("{}: not a number", sample.name))?;
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    let waiting = waiting.ok_or("no vllm:num_requests_waiting")?;
    // KV use is a fraction per engine: the mean over series.
    let kv = kv.ok_or("no vllm:kv_cache_usage_perc")? / f64::from(kv_series.max(1));
    Ok(Scraped { running: running.unwrap_or(0.0), waiting, kv: kv.min(1.0) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_and_older_names_with_labels() {
        let text = "# HELP vllm:num_requests_waiting x\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"a b\"} 3\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"a b\"} 2\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"c\"} 1\n\
            vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\n";
        assert_eq!(parse(text).unwrap(), Scraped { running: 3.0, waiting: 3.0, kv: 0.5 });
        let old = "vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.25 1700000000\n";
        assert_eq!(parse(old).unwrap(), Scraped { running: 0.0, waiting: 0.0, kv: 0.25 });
    }

    #[test]
    fn garbage_and_missing_series_fail() {
        assert!(parse("<html>hello</html>").is_err());
        assert!(parse("vllm:num_requests_waiting 1\n").is_err(), "no KV series");
        assert!(parse("vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc 0.1\n").is_err());
        assert!(parse("vllm:num_requests_waiting{a=\"1\" 2\nvllm:kv_cache_usage_perc 0.1\n").is_err());
        assert!(parse("vllm:num_requests_waiting -1\nvllm:kv_cache_usage_perc 0.1\n").is_err());
    }
}
