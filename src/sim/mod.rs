//! `mcas-sim`: a fast vLLM-like OpenAI-compatible upstream simulator, for tests, benchmarks
//! and the gateway's `--demo` (which embeds replicas in-process through [`serve`]).
//!
//! ```text
//! mcas-sim --listen 127.0.0.1:8000 --models a,b --tokens 16 --ttft-ms 50 --itl-ms 10
//! POST …/chat/completions, …/completions  streamed (SSE) or not, with usage and cached tokens
//! GET  …/models, /health, /metrics         OpenAI model list; 200; Prometheus text
//! any  …/echo                              JSON of method, path, headers, body length and sha256
//! POST …/embeddings, …/rerank, /v2/rerank, …/score, /tokenize, /detokenize, …/audio/*
//! POST …/v1/responses; GET …/v1/responses/{id}; POST …/{id}/cancel (stored per replica)
//! GET  …/ws (Upgrade)                      WebSocket echo; ?push_ms=N pushes "push <n>" frames
//! request headers: x-sim-tokens, x-sim-ttft-ms, x-sim-itl-ms, x-sim-fail: error|close|hang,
//!                  x-sim-status: NNN;  every response carries x-mcas-replica
//! --force-gzip: every answer gzipped, whatever Accept-Encoding says
//! --max-seqs N (with --kv-blocks, --prefill-us-per-token, --decode-ms-per-step,
//!   --decode-batch-factor): the replica model of [`engine`] paces answers instead
//! ```
//!
//! Token rules: prompt_tokens = ceil(prompt bytes / 4) (see [`openai`] for the prompt text);
//! the prefix cache ([`prefix_cache`]) counts cached tokens by the same rule.

mod completion;
pub mod config;
mod echo;
pub mod engine;
mod gzip;
mod lora;
mod metrics;
pub mod openai;
pub mod prefix_cache;
mod replica;
mod response;
mod responses;
mod route;
mod server;
mod stream;
mod surface;
mod ws;

pub use config::{usage, SimConfig};
pub use server::serve;
