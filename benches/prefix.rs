//! Prefix-cache affinity benchmark: a multi-turn chat workload through the gateway in front
//! of 4 `mcas-sim` replicas with a small prefix cache, once per balance policy.
//!
//! ```text
//! cargo bench --bench prefix                 # 200 conversations × 6 turns, 16 in flight
//! PREFIX_CONVERSATIONS=50 cargo bench --bench prefix
//! ```
//!
//! Method: every policy gets 4 fresh replicas (`--prefix-cache-blocks 1000 --block-chars 64
//! --ttft-ms 20 --tokens 24`) and a fresh gateway. 200 conversations of 6 turns each: a turn
//! resends the whole history (a system prompt shared by all conversations, then user and
//! assistant messages) plus a new user message of 300–600 characters. Conversations run 48 at a
//! time, interleaved turn by turn, 16 requests in flight. The hit rate is the sims' own
//! `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` (prompt tokens); the load
//! columns count requests per replica (from `x-mcas-replica`) and the peak in-flight per replica
//! sampled from the gateway's `/health` every 10 ms.
//! Caveats: loopback, one machine shared by sims, gateway and client; the sim's cache is an
//! LRU of 64-byte blocks, not vLLM's paged allocator; numbers compare policies, not hardware.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::gateway::spawn_gateway;
use common::text::words;
use common::{spawn_sim, Proc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "bench-key-0123456789";
const REPLICAS: usize = 4;
const TURNS: usize = 6;
const ACTIVE: usize = 48;
const IN_FLIGHT: usize = 16;

struct Policy {
    name: &'static str,
    yaml: &'static str,
}

const POLICIES: &[Policy] = &[
    Policy { name: "round_robin", yaml: "balance: round_robin" },
    Policy { name: "least_inflight", yaml: "balance: least_inflight" },
    Policy { name: "ketama prefix (no bound)", yaml: "balance: ketama, hash_key: [prefix], epsilon: off" },
    Policy { name: "ketama prefix + bounded ε=0.25", yaml: "balance: ketama, hash_key: [prefix], epsilon: 0.25" },
    Policy { name: "ketama prefix + bounded ε=1.0", yaml: "balance: ketama, hash_key: [prefix], epsilon: 1.0" },
];

/// A conversation's messages so far, and how many of its turns are done.
type History = (Vec<Value>, usize);

struct Row {
    name: &'static str,
    hit_rate: f64,
    requests: Vec<usize>,
    peak_inflight: Vec<usize>,
    seconds: f64,
    failed: usize,
}

/// The schedule: conversations in windows of ACTIVE, each window turn by turn, shuffled.
fn schedule(conversations: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for start in (0..conversations).step_by(ACTIVE) {
        let ids: Vec<usize> = (start..(start + ACTIVE).min(conversations)).collect();
        for turn in 0..TURNS {
            let mut round: Vec<(usize, usize)> = ids.iter().map(|&c| (c, turn)).collect();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.gen_range(0..=i));
            }
            out.extend(round);
        }
    }
    out
}

async fn sim_counter(sim: &Proc, name: &str) -> f64 {
    let text = reqwest::get(sim.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

async fn run(policy: &Policy, conversations: usize) -> Row {
    let mut sims = Vec::new();
    for i in 0..REPLICAS {
        let id = format!("r{i}");
        let args = [
            "--replica-id",
            &id,
            "--prefix-cache-blocks",
            "1000",
            "--block-chars",
            "64",
            "--ttft-ms",
            "20",
            "--tokens",
            "24",
        ];
        sims.push(spawn_sim(&args).await);
    }
    let list: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let yaml = format!(
        "keys:\n  - {{ name: bench, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n  - {{ name: vllm, url: \"http://vllm.internal/v1\", \
         backends: [{}], health: {{ enabled: false }}, {} }}\nlog: {{ access_log: false, level: warn }}\n",
        list.join(", "),
        policy.yaml
    );
    let gw = spawn_gateway("", &yaml, &[]).await;
    let url = gw.url("/v1/chat/completions");

    let mut rng = StdRng::seed_from_u64(42);
    let system = words(&mut rng, 400);
    // Per conversation: the message history, and how many turns are done.
    let histories: Arc<Vec<Mutex<History>>> = Arc::new(
        (0..conversations)
            .map(|_| Mutex::new((vec![json!({"role": "system", "content": system.clone()})], 0)))
            .collect(),
    );
    let user_turns: Arc<Vec<Vec<String>>> = Arc::new(
        (0..conversations)
            .map(|_| {
                (0..TURNS)
                    .map(|_| {
                        let n = rng.gen_range(300..600);
                        words(&mut rng, n)
                    })
                    .collect()
            })
            .collect(),
    );
    let plan = Arc::new(schedule(conversations, &mut rng));
    let next = Arc::new(AtomicUsize::new(0));
    let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));

    // Peak in-flight per backend, sampled from the admin /health.
    let done = Arc::new(AtomicBool::new(false));
    let admin = gw.admin_url("/health");
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut peak = vec![0usize; REPLICAS];
            while !done.load(Ordering::Relaxed) {
                if let Ok(r) = c.get(&admin).send().await {
                    if let Ok(v) = r.json::<Value>().await {
                        for (i, b) in v["providers"][0]["backends"].as_array().into_iter().flatten().enumerate() {
                            peak[i] = peak[i].max(b["inflight"].as_u64().unwrap_or(0) as usize);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };

    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (plan, next, histories, user_turns, served, failed, url) = (
            plan.clone(),
            next.clone(),
            histories.clone(),
            user_turns.clone(),
            served.clone(),
            failed.clone(),
            url.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(conv, turn)) = plan.get(i) else { return };
                // Wait for this conversation's previous turn (taken earlier by another worker).
                let messages = loop {
                    {
                        let h = histories[conv].lock().unwrap();
                        if h.1 == turn {
                            let mut m = h.0.clone();
                            m.push(json!({"role": "user", "content": user_turns[conv][turn]}));
                            break m;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                let body = json!({"model": "sim-model", "messages": messages});
                let resp = c.post(&url).bearer_auth(KEY).json(&body).send().await;
                let mut h_reply = String::new();
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let replica = r.headers()["x-mcas-replica"].to_str().unwrap().to_string();
                        *served.lock().unwrap().entry(replica).or_default() += 1;
                        let v: Value = r.json().await.unwrap();
                        h_reply = v["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let mut h = histories[conv].lock().unwrap();
                h.0.push(json!({"role": "user", "content": user_turns[conv][turn]}));
                h.0.push(json!({"role": "assistant", "content": h_reply}));
                h.1 += 1;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let seconds = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let peak_inflight = sampler.await.unwrap();

    let (mut hits, mut queries) = (0.0, 0.0);
    for s in &sims {
        hits += sim_counter(s, "vllm:prefix_cache_hits_total").await;
        queries += sim_counter(s, "vllm:prefix_cache_queries_total").await;
    }
    let served = served.lock().unwrap();
    let requests = (0..REPLICAS).map(|i| served.get(&format!("r{i}")).copied().unwrap_or(0)).collect();
    Row {
        name: policy.name,
        hit_rate: if queries > 0.0 { hits / queries } else { 0.0 },
        requests,
        peak_inflight,
        seconds,
        failed: failed.load(Ordering::Relaxed),
    }
}

fn max_over_mean(v: &[usize]) -> f64 {
    let mean = v.iter().sum::<usize>() as f64 / v.len() as f64;
    if mean == 0.0 {
        return 0.0;
    }
    *v.iter().max().unwrap_or(&0) as f64 / mean
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects policies by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let conversations: usize = std::env::var("PREFIX_CONVERSATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "prefix-cache benchmark: {conversations} conversations × {TURNS} turns, {ACTIVE} active, {IN_FLIGHT} in flight, \
         {REPLICAS} replicas (cache 1000 blocks × 64 chars each)\n"
    );
    println!(
        "| policy | prefix-cache hit rate | requests per replica | max/mean requests | peak in-flight per replica | failed | time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for p in POLICIES {
        if filter.as_deref().is_some_and(|f| !p.name.contains(f)) {
            continue;
        }
        let row = rt.block_on(run(p, conversations));
        println!(
            "| {} | {:.1}% | {:?} | {:.2} | {:?} | {} | {:.1}s |",
            row.name,
            row.hit_rate * 100.0,
            row.requests,
            max_over_mean(&row.requests),
            row.peak_inflight,
            row.failed,
            row.seconds
        );
    }
}
