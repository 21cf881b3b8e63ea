//! The state of one simulated replica, shared by all its connections.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderValue;
use prometheus::IntGauge;

use super::config::SimConfig;
use super::metrics::Metrics;
use super::openai::models_body;
use super::prefix_cache::PrefixCache;

pub struct Replica {
    pub cfg: SimConfig,
    /// Value of `x-mcas-replica`.
    pub name: HeaderValue,
    pub metrics: Metrics,
    pub cache: PrefixCache,
    /// The replica model's scheduler, when `--max-seqs` is set.
    pub engine: Option<std::sync::Arc<super::engine::Engine>>,
    /// `GET /v1/models`, serialized once.
    pub models_body: Bytes,
    /// LoRA adapters and which are loaded (`--lora`).
    pub lora: super::lora::Lora,
    /// Responses API answers this replica keeps (`store`), as vLLM does.
    pub responses: super::responses::Store,
    /// `Bearer <key>` when `--api-key` is set.
    pub bearer: Option<Vec<u8>>,
    /// Random per instance, so ids of replicas in one process differ.
    id_salt: u32,
    next_id: AtomicU64,
}

impl Replica {
    /// `port` names the replica when the config does not.
    pub fn new(cfg: SimConfig, port: u16) -> io::Result<Self> {
        cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let name = cfg.replica_id.clone().unwrap_or_else(|| format!("sim-{port}"));
        let name = HeaderValue::from_str(&name).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("--replica-id: {name:?} is not a valid header value"))
        })?;
        let metrics = Metrics::new().map_err(io::Error::other)?;
        let model = &cfg.engine;
        let engine = (model.max_seqs > 0).then(|| {
            std::sync::Arc::new(super::engine::Engine::new(model.clone(), cfg.block_chars, metrics.engine.clone()))
        });
        // With the model on, cached blocks share the KV capacity.
        let cache_blocks =
            if engine.is_some() { cfg.prefix_cache_blocks.min(model.kv_blocks) } else { cfg.prefix_cache_blocks };
        Ok(Replica {
            name,
            metrics,
            cache: PrefixCache::new(cache_blocks, cfg.block_chars),
            engine,
            models_body: Bytes::from(super::lora::with_adapters(models_body(&cfg.models), &cfg)),
            lora: super::lora::Lora::new(cfg.lora.clone(), cfg.max_loras, cfg.lora_load),
            responses: Default::default(),
            bearer: cfg.api_key.as_ref().map(|k| format!("Bearer {k}").into_bytes()),
            id_salt: rand::random(),
            next_id: AtomicU64::new(1),
            cfg,
        })
    }

    /// A unique completion id, e.g. `chatcmpl-1a2b3c4d0000000000000007`.
    pub fn next_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:08x}{n:016x}", self.id_salt)
    }

    /// Whether the request's `Authorization` header carries the key (constant time).
    pub fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.bearer, header) {
            (None, _) => true,
            (Some(want), Some(got)) => want.as_slice().ct_eq(got.as_bytes()).into(),
            (Some(_), None) => false,
        }
    }
}

/// Counts a completion request as running from creation until drop.
pub struct Running(IntGauge);

impl Running {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Running(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}
