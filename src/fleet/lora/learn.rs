//! A round of learning for one provider with `lora`: each backend's model list
//! (`{url's path}/models`, e.g. `/v1/models`) and `/metrics` (unless the inference scrape
//! reads them), fetched at once as the
//! inference scraper fetches (`fleet/inference/scrape.rs`, `fleet/backend_http.rs`: bounded
//! read, provider key, timeouts) and recorded per replica. A failure keeps that replica's last good view.

use super::{parse, LoraState};
use crate::fleet::inference::scrape;
use crate::fleet::Provider;

/// Path of vLLM's Prometheus metrics, from the backend's root.
pub const METRICS_PATH: &str = "/metrics";

pub async fn round(p: &Provider, state: &LoraState) {
    let timeout = state.settings.refresh.clamp(scrape::MIN_TIMEOUT, scrape::MAX_TIMEOUT);
    let models_path = p.upstream_path("/models");
    let fetches = p.backends.iter().map(|b| {
        let models_path = &models_path;
        async move {
            let models = scrape::fetch(p, b.addr, models_path, timeout).await;
            // A provider scraped for `balance: inference` has its metrics read there, at that
            // scrape's path and pace (`inference/scrape.rs`): not fetched a second time here.
            let hot = match p.inference {
                Some(_) => None,
                None => Some(scrape::fetch(p, b.addr, METRICS_PATH, timeout).await.and_then(|t| parse::lora_info(&t))),
            };
            (models.and_then(|t| parse::adapters(&t)), hot)
        }
    });
    let results = futures_util::future::join_all(fetches).await;
    for ((b, replica), (served, hot)) in p.backends.iter().zip(&state.replicas).zip(results) {
        match served {
            Ok(s) => replica.record_served(s),
            Err(why) => log::debug!("provider {} backend {}: model list not learned: {why}", p.name, b.addr),
        }
        if let Some(hot) = hot {
            record_hot(p, b.addr, replica, hot);
        }
    }
}

/// What a replica's metrics said of its loaded adapters; a failure keeps the last good view.
pub fn record_hot(
    p: &Provider,
    addr: std::net::SocketAddr,
    replica: &super::ReplicaAdapters,
    hot: Result<parse::LoraInfo, String>,
) {
    match hot {
        Ok(info) => replica.record_hot(info),
        Err(why) => log::debug!("provider {} backend {addr}: loaded adapters not learned: {why}", p.name),
    }
}
