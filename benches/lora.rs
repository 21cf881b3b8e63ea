//! LoRA adapter placement benchmark: 3 `mcas-sim` replicas (`--max-loras 2`, 6 adapters,
//! loading one costs `--lora-load-ms 40`) behind the gateway, skewed traffic over the
//! adapters, with `ketama` on its default hash key, `ketama` on `hash_key: [model]` (each
//! adapter's requests share a replica; bounded load spreads a busy one), and the adapter-aware
//! choice (`lora`: the gateway learns each replica's served and hot adapters and keeps an
//! adapter where it is hot, spreading it when that replica is over the bounded load).
//!
//! ```text
//! cargo bench --profile dev --bench lora           # 1,000 streamed requests, 12 in flight
//! LORA_REQUESTS=300 cargo bench --profile dev --bench lora
//! LORA_POLICY=adapter-aware cargo bench --profile dev --bench lora   # one policy (name contains)
//! ```
//!
//! Method: per policy, fresh replicas (`--models base --lora l1,…,l6 --max-loras 2
//! --lora-load-ms 40 --ttft-ms 10 --itl-ms 1 --tokens 4`) and a fresh gateway. Each request
//! picks adapter l1…l6 with weights 35, 25, 15, 12, 8, 5 % (seeded) and a distinct prompt,
//! streamed; TTFT is the client's time to the first body byte. Adapter loads are the sims' own
//! `mcas_sim_lora_loads_total`, summed, per 1,000 requests. Caveats: loopback, one 2-core
//! machine shared by sims, gateway and client, debug build if run with `--profile dev`; the
//! sim's loader is an LRU of `--max-loras` slots that never evicts an adapter with requests
//! running, not vLLM's scheduler; numbers compare policies, not hardware.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::gateway::spawn_gateway;
use common::{spawn_sim, Proc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const KEY: &str = "bench-key-0123456789";
const WEIGHTS: [u32; 6] = [35, 25, 15, 12, 8, 5];
const IN_FLIGHT: usize = 12;

async fn loads(sims: &[Proc]) -> u64 {
    let mut total = 0;
    for s in sims {
        let text = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
        let n = text.lines().find_map(|l| l.strip_prefix("mcas_sim_lora_loads_total ")).unwrap_or("0");
        total += n.trim().parse::<u64>().unwrap();
    }
    total
}

async fn run(name: &str, fleet_yaml: &str, requests: usize) -> (String, f64, f64, f64) {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(
            spawn_sim(&[
                "--models",
                "base",
                "--lora",
                "l1,l2,l3,l4,l5,l6",
                "--max-loras",
                "2",
                "--lora-load-ms",
                "40",
                "--ttft-ms",
                "10",
                "--itl-ms",
                "1",
                "--tokens",
                "4",
                "--prefix-cache-blocks",
                "0",
            ])
            .await,
        );
    }
    let backends: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let rest = format!(
        "keys:\n  - {{ name: bench, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n  - {{ name: sim, url: \"http://vllm.test/v1\", backends: [{}], health: {{ enabled: false }}, {fleet_yaml} }}\n",
        backends.join(", ")
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let url = gw.url("/v1/chat/completions");
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(7)));
    let next = Arc::new(AtomicUsize::new(0));
    let ttfts = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (rng, next, ttfts, client, url) =
                (rng.clone(), next.clone(), ttfts.clone(), client.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let adapter = {
                        let mut r = rng.lock().unwrap();
                        let mut x = r.gen_range(0..100);
                        WEIGHTS.iter().position(|w| {
                            if x < *w {
                                return true;
                            }
                            x -= w;
                            false
                        })
                    };
                    let model = format!("l{}", adapter.unwrap_or(5) + 1);
                    let body = json!({"model": model, "stream": true,
                        "messages": [{"role": "user", "content": format!("request {i}: hello")}]});
                    let t = Instant::now();
                    let mut resp = client.post(&url).bearer_auth(KEY).json(&body).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let _first = resp.chunk().await.unwrap();
                    ttfts.lock().unwrap().push(t.elapsed());
                    while resp.chunk().await.unwrap().is_some() {}
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let wall = started.elapsed();
    let total_loads = loads(&sims).await as f64;
    let mut t = ttfts.lock().unwrap().clone();
    t.sort();
    let p = |q: f64| t[((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1].as_secs_f64() * 1000.0;
    println!(
        "{name}: {requests} requests in {:.1}s, adapter loads {total_loads}, TTFT p50 {:.1} ms p99 {:.1} ms",
        wall.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    (name.to_string(), total_loads * 1000.0 / requests as f64, p(0.5), p(0.99))
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("LORA_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let only = std::env::var("LORA_POLICY").ok();
    let policies = [
        ("ketama, default hash_key", "balance: ketama"),
        ("ketama, hash_key: [model], epsilon: 1.0", "balance: ketama, hash_key: [model], epsilon: 1.0"),
        ("adapter-aware: lora: { refresh: 1s }, epsilon: 1.0", "balance: ketama, lora: { refresh: 1s }, epsilon: 1.0"),
    ];
    let mut rows = Vec::new();
    for (name, yaml) in policies {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        rows.push(run(name, yaml, requests).await);
    }
    println!("\n| policy (3 replicas, --max-loras 2, 6 adapters, skewed) | adapter loads / 1,000 requests | TTFT p50 | TTFT p99 |");
    println!("|---|---|---|---|");
    for (name, per_k, p50, p99) in rows {
        println!("| {name} | {per_k:.0} | {p50:.1} ms | {p99:.1} ms |");
    }
}
