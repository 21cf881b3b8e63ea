//! Fleet benchmark: balance policies against 4 `mcas-sim` replicas running the replica model
//! (docs/sim.md), under open-loop Poisson load at 0.5×, 0.9× and 1.2× the fleet's measured
//! capacity.
//!
//! ```text
//! cargo bench --bench fleet                      # release build
//! cargo bench --profile dev --bench fleet        # debug build: cheaper to build, same shape
//! FLEET_SECONDS=20 FLEET_CAPACITY_SECONDS=15 FLEET_CAPACITY=30 FLEET_LOADS=0.9,1.2
//! FLEET_POLICIES=inference,least_inflight …   (policy name prefixes)
//! FLEET_SEED=0,1 (workload and arrival sequences, each a row per policy and load; default
//!   0,1,2: one cell's p99 is its few slowest requests, so one seed alone proves little; the
//!   rows are then pooled per policy and load, TTFT over every served request of every seed,
//!   and the issue's "Done when" is checked on the pooled rows. About 27 s a cell: the default
//!   45 cells take ~20 min)
//! FLEET_TRACE=1 (print each cell's slowest requests with their uncached prompt tokens and
//!   where their time to first token went (the sim's `x_sim_timing`, docs/sim.md: gateway,
//!   seat wait, the step under way's prefill and decode, own prefill, batch prefill,
//!   decode+timer, in ms), that split averaged over the slowest 1 %, the requests with over
//!   1,000 uncached and the p99 of the rest, and the sims' preemptions to stderr;
//!   FLEET_TRACE=all also lists every request of the slowest 1 % and with over 1,000 uncached)
//! ```
//!
//! Workload: 24 tenants; tenant t uses system prompt t mod 6 (1,000 to 8,000 characters);
//! tenant 0 sends 30 % of the requests. Each request continues one of its tenant's open
//! conversations (70 %, up to 6 turns, whole history resent) or starts one; new user messages
//! are 100–1,500 characters, `max_tokens` 16–96, streamed. Capacity: completed requests/s of a
//! closed loop of 96 clients through `least_inflight` (or `FLEET_CAPACITY`). Per cell, fresh
//! sims and gateway; TTFT = first body byte; tok/s = completion tokens (usage) / time to the
//! last answer; prefix hit = the sims' `vllm:prefix_cache_hits_total / queries_total`; load =
//! max / mean requests per replica; queued = requests that waited in the gateway's admission
//! queue; refused = 503 answers; errors = anything else that was not a 200.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::gateway::spawn_gateway;
use common::text::words;
use common::{spawn_sim, Proc};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "bench-key-0123456789";
const REPLICAS: usize = 4;
const SIM: &[&str] = &[
    "--max-seqs",
    "16",
    "--kv-blocks",
    "2048",
    "--prefix-cache-blocks",
    "2048",
    "--block-chars",
    "64",
    "--prefill-us-per-token",
    "100",
    "--decode-ms-per-step",
    "10",
    "--decode-batch-factor",
    "0.05",
    "--tokens",
    "96",
];
const POLICIES: &[(&str, &str)] = &[
    ("round_robin", "balance: round_robin"),
    ("least_inflight", "balance: least_inflight"),
    ("ketama prefix ε=off", "balance: ketama, hash_key: [prefix], epsilon: off"),
    ("ketama prefix ε=1.0", "balance: ketama, hash_key: [prefix], epsilon: 1.0"),
    ("inference", "balance: inference, inference: { scrape: { interval: 200ms }, saturated: { waiting: 3 }, queue: { max: 1024, timeout: 500ms }, max_seqs: 16 }"),
];
const TENANTS: usize = 24;
const SYSTEMS: [usize; 6] = [1000, 2000, 3000, 4000, 6000, 8000];

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Convo {
    tenant: usize,
    messages: Vec<Value>,
    busy: bool,
}

/// The multi-turn workload: conversations per tenant, shared system prompts.
struct Workload {
    rng: StdRng,
    systems: Vec<String>,
    convos: Vec<Convo>,
}

impl Workload {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let systems = SYSTEMS.iter().enumerate().map(|(i, &n)| format!("system {i}: {}", words(&mut rng, n))).collect();
        Workload { rng, systems, convos: Vec::new() }
    }

    /// The next request: (conversation index, body).
    /// Every random draw is made whatever the state, in the same order: which conversations
    /// are open depends on when earlier answers came, so conditional draws would give each
    /// policy a different sequence of requests (below capacity tok/s, the offered tokens over
    /// the time to the last answer, then differed by ±5 % between policies with one seed).
    fn next(&mut self) -> (usize, Value) {
        let (hot, other, resume, pick) =
            (self.rng.gen_bool(0.3), self.rng.gen_range(1..TENANTS), self.rng.gen_bool(0.7), self.rng.gen::<u64>());
        let tenant = if hot { 0 } else { other };
        let open: Vec<usize> = (0..self.convos.len())
            .filter(|&i| self.convos[i].tenant == tenant && !self.convos[i].busy && self.convos[i].messages.len() < 12)
            .collect();
        let i = if !open.is_empty() && resume {
            open[(pick % open.len() as u64) as usize]
        } else {
            let system = json!({"role": "system", "content": self.systems[tenant % SYSTEMS.len()]});
            self.convos.push(Convo { tenant, messages: vec![system], busy: false });
            self.convos.len() - 1
        };
        let n = self.rng.gen_range(100..1500);
        let user = json!({"role": "user", "content": words(&mut self.rng, n)});
        let c = &mut self.convos[i];
        c.busy = true;
        c.messages.push(user);
        let max_tokens = self.rng.gen_range(16..=96);
        let body = json!({"model": "sim-model", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": max_tokens, "messages": c.messages});
        (i, body)
    }

    fn answered(&mut self, i: usize, tokens: u64) {
        let c = &mut self.convos[i];
        c.busy = false;
        c.messages.push(json!({"role": "assistant", "content": format!("answer of {tokens} tokens")}));
    }
}

/// One served request, for FLEET_TRACE.
#[derive(Clone)]
struct Traced {
    ttft: f64,
    prompt_bytes: usize,
    uncached: u64,
    replica: String,
    /// The sim's `x_sim_timing` (docs/sim.md): where its time to first token went there.
    timing: Value,
}

impl Traced {
    /// The time to first token split (ms): gateway and network (the client's TTFT less the
    /// sim's), waiting for a seat, waiting for the step under way (its prefill, the rest), own
    /// prefill, the prefill of others admitted with it, decode and timer rounding.
    fn parts(&self) -> [f64; 7] {
        let t = |k: &str| self.timing[k].as_f64().unwrap_or(0.0);
        let first = t("first_token_ms");
        let (queue, ahead, ahead_prefill) = (t("queue_ms"), t("step_ahead_ms"), t("step_ahead_prefill_ms"));
        let (own, batch) = (t("own_prefill_ms"), t("batch_prefill_ms"));
        [
            self.ttft * 1000.0 - first,
            queue - ahead,
            ahead_prefill,
            ahead - ahead_prefill,
            own,
            batch,
            first - queue - own - batch,
        ]
    }
}

const PARTS: [&str; 7] =
    ["gateway", "seat wait", "step-ahead prefill", "step-ahead decode", "own prefill", "batch prefill", "decode+timer"];

#[derive(Default)]
struct Tally {
    ttft: Vec<f64>,
    trace: Vec<Traced>,
    tokens: u64,
    refused: usize,
    errors: usize,
    served: HashMap<String, usize>,
    last: Option<Instant>,
}

/// Sends one request and records it.
async fn one(c: &reqwest::Client, url: &str, body: Value, tally: &Mutex<Tally>) -> u64 {
    let t0 = Instant::now();
    let prompt_bytes = body["messages"].to_string().len();
    let resp = match c.post(url).bearer_auth(KEY).json(&body).send().await {
        Ok(r) => r,
        Err(_) => {
            tally.lock().unwrap().errors += 1;
            return 0;
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let mut t = tally.lock().unwrap();
        if status == 503 {
            t.refused += 1;
        } else {
            t.errors += 1;
        }
        return 0;
    }
    let replica = resp.headers().get("x-mcas-replica").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let mut stream = resp.bytes_stream();
    let (mut first, mut text, mut failed) = (None, String::new(), false);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                text.push_str(&String::from_utf8_lossy(&b));
            }
            Err(_) => failed = true,
        }
    }
    let last = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("usage").is_some_and(|u| u.is_object()))
        .unwrap_or(Value::Null);
    let usage = &last["usage"];
    let tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    let uncached = usage["prompt_tokens"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0));
    let mut t = tally.lock().unwrap();
    if failed || !text.contains("[DONE]") {
        t.errors += 1;
        return 0;
    }
    t.ttft.push(first.unwrap_or(0.0));
    t.trace.push(Traced {
        ttft: first.unwrap_or(0.0),
        prompt_bytes,
        uncached,
        replica: replica.clone(),
        timing: last["x_sim_timing"].clone(),
    });
    t.tokens += tokens;
    *t.served.entry(replica).or_default() += 1;
    t.last = Some(Instant::now());
    tokens
}

struct Fleet {
    sims: Vec<Proc>,
    gw: common::gateway::Gw,
}

async fn fleet(policy: &str) -> Fleet {
    let mut sims = Vec::new();
    for i in 0..REPLICAS {
        let id = format!("r{i}");
        let mut args = vec!["--replica-id", id.as_str()];
        args.extend_from_slice(SIM);
        sims.push(spawn_sim(&args).await);
    }
    let list: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let yaml = format!(
        "keys:\n  - {{ name: bench, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n  - {{ name: vllm, url: \"http://vllm.internal/v1\", \
         backends: [{}], health: {{ enabled: false }}, timeouts: {{ read: 120s }}, {policy} }}\nlog: {{ access_log: false, level: warn }}\n",
        list.join(", ")
    );
    Fleet { sims, gw: spawn_gateway("", &yaml, &[]).await }
}

async fn sim_counter(sim: &Proc, name: &str) -> f64 {
    let text = reqwest::get(sim.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

async fn gw_counter(gw: &common::gateway::Gw, prefix: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    // Starts from +0.0: an empty f64 sum is -0.0.
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// Completed requests per second of a closed loop of 96 clients through least_inflight.
async fn capacity(seconds: f64) -> f64 {
    let f = fleet("balance: least_inflight").await;
    let url = f.gw.url("/v1/chat/completions");
    let work = Arc::new(Mutex::new(Workload::new(7)));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..96 {
        let (url, work, tally) = (url.clone(), work.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while Instant::now() < end {
                let (i, body) = work.lock().unwrap().next();
                let tokens = one(&c, &url, body, &tally).await;
                work.lock().unwrap().answered(i, tokens);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let done = tally.lock().unwrap().ttft.len();
    done as f64 / t0.elapsed().as_secs_f64()
}

struct Row {
    /// Every served request's TTFT, sorted (for the rows pooled over seeds).
    ttft: Vec<f64>,
    seed: u64,
    policy: &'static str,
    load: f64,
    p50: f64,
    p99: f64,
    tok_s: f64,
    hit: f64,
    max_mean: f64,
    queued: f64,
    refused: usize,
    errors: usize,
    sent: usize,
}

async fn cell(policy: &'static str, yaml: &str, load: f64, rate: f64, seconds: f64, seed: u64) -> Row {
    let f = fleet(yaml).await;
    let url = f.gw.url("/v1/chat/completions");
    let work = Arc::new(Mutex::new(Workload::new(11 + seed)));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut rng = StdRng::seed_from_u64(5 + seed);
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    let (mut at, mut last_at) = (0.0, 0.0);
    let mut tasks = Vec::new();
    loop {
        // Exponential gaps: a Poisson process of `rate` requests/s.
        at += -(1.0 - rng.gen::<f64>()).ln() / rate;
        if at > seconds {
            break;
        }
        last_at = at;
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
        let (c, url, work, tally, sent) = (c.clone(), url.clone(), work.clone(), tally.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let (i, body) = work.lock().unwrap().next();
            sent.fetch_add(1, Ordering::Relaxed);
            let tokens = one(&c, &url, body, &tally).await;
            work.lock().unwrap().answered(i, tokens);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (mut hits, mut queries) = (0.0, 0.0);
    for s in &f.sims {
        hits += sim_counter(s, "vllm:prefix_cache_hits_total").await;
        queries += sim_counter(s, "vllm:prefix_cache_queries_total").await;
    }
    let queued = gw_counter(&f.gw, "mcas_inference_queue_wait_seconds_count").await
        + gw_counter(&f.gw, "mcas_inference_queue_refusals_total").await;
    if std::env::var("FLEET_TRACE").is_ok() {
        let health: Value = reqwest::get(f.gw.admin_url("/health")).await.unwrap().json().await.unwrap_or(Value::Null);
        eprintln!("  {policy} {load}×: /health {health}");
        for s in &f.sims {
            eprintln!("  {policy} {load}×: preemptions {}", sim_counter(s, "vllm:num_preemptions_total").await);
        }
    }
    let t = tally.lock().unwrap();
    if std::env::var("FLEET_TRACE").is_ok() {
        let mut slow = t.trace.clone();
        slow.sort_by(|a, b| b.ttft.total_cmp(&a.ttft));
        let big = slow.iter().filter(|r| r.uncached > 1000).count();
        let small: Vec<f64> = slow.iter().filter(|r| r.uncached <= 1000).map(|r| r.ttft).collect();
        let p = small.get(small.len() / 100).copied().unwrap_or(0.0);
        let total_uncached: u64 = slow.iter().map(|r| r.uncached).sum();
        eprintln!("  {policy} {load}×: {big} requests > 1000 tokens uncached; p99 of the others {:.0} ms; {total_uncached} tokens uncached in all", p * 1000.0);
        let over = |ms: f64| slow.iter().filter(|r| r.ttft * 1000.0 > ms).count();
        eprintln!(
            "  {policy} {load}×: TTFT over 100 / 150 / 200 / 300 ms: {} / {} / {} / {}",
            over(100.0),
            over(150.0),
            over(200.0),
            over(300.0)
        );
        // The slowest 1 %: where their time went, summed (the sim's x_sim_timing).
        let tail = &slow[..slow.len().div_ceil(100)];
        let mut sum = [0.0; 7];
        for r in tail {
            sum.iter_mut().zip(r.parts()).for_each(|(s, p)| *s += p);
        }
        let n = tail.len().max(1) as f64;
        let split: Vec<String> = PARTS.iter().zip(sum).map(|(k, v)| format!("{k} {:.0}", v / n)).collect();
        eprintln!("  {policy} {load}×: slowest {} mean ms: {}", tail.len(), split.join(", "));
        let all = std::env::var("FLEET_TRACE").as_deref() == Ok("all");
        for r in slow
            .iter()
            .enumerate()
            .filter(|(i, r)| *i < 10 || all && (r.uncached > 1000 || *i < tail.len()))
            .map(|(_, r)| r)
        {
            let parts: Vec<String> = r.parts().iter().map(|v| format!("{v:.0}")).collect();
            eprintln!(
                "  {policy} {load}×: TTFT {:.0} ms, prompt {} B ({} tokens uncached), {}, split [{}], running {}, waiting ahead {}",
                r.ttft * 1000.0,
                r.prompt_bytes,
                r.uncached,
                r.replica,
                parts.join(" "),
                r.timing["running"],
                r.timing["waiting_ahead"],
            );
        }
    }
    let mut ttft = t.ttft.clone();
    ttft.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&ttft, p);
    let elapsed = t.last.map_or(seconds, |l| l.duration_since(t0).as_secs_f64());
    if std::env::var("FLEET_TRACE").is_ok() {
        eprintln!(
            "  {policy} {load}×: {} completion tokens over {elapsed:.2} s (last arrival at {last_at:.2} s)",
            t.tokens
        );
    }
    let loads: Vec<usize> = (0..REPLICAS).map(|i| t.served.get(&format!("r{i}")).copied().unwrap_or(0)).collect();
    let mean = loads.iter().sum::<usize>() as f64 / REPLICAS as f64;
    Row {
        ttft: ttft.clone(),
        seed,
        policy,
        load,
        p50: pct(0.5).unwrap_or(f64::NAN),
        p99: pct(0.99).unwrap_or(f64::NAN),
        tok_s: t.tokens as f64 / elapsed,
        hit: if queries > 0.0 { hits / queries } else { 0.0 },
        max_mean: *loads.iter().max().unwrap_or(&0) as f64 / mean.max(1.0),
        queued,
        refused: t.refused,
        errors: t.errors,
        sent: sent.load(Ordering::Relaxed),
    }
}

/// The `p` quantile of sorted samples (NaN if none).
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied()
}

/// One policy at one load over every seed: TTFT percentiles of all served requests together
/// (a 20 s cell at 0.9x has ~660 samples, its p99 is its 7th slowest; three seeds pooled put
/// the p99 ~20 deep), tok/s and hit rate averaged over the seeds, queued and refused summed.
struct Pooled {
    load: f64,
    policy: &'static str,
    p50: f64,
    p99: f64,
    tok_s: f64,
    hit: f64,
    queued: f64,
    refused: usize,
    errors: usize,
    sent: usize,
}

fn pool(rows: &[Row]) -> Vec<Pooled> {
    let mut out: Vec<Pooled> = Vec::new();
    for &(name, _) in POLICIES {
        let of: Vec<&Row> = rows.iter().filter(|r| r.policy == name).collect();
        let Some(first) = of.first() else { continue };
        let mut ttft: Vec<f64> = of.iter().flat_map(|r| r.ttft.iter().copied()).collect();
        ttft.sort_by(f64::total_cmp);
        let n = of.len() as f64;
        out.push(Pooled {
            load: first.load,
            policy: name,
            p50: percentile(&ttft, 0.5).unwrap_or(f64::NAN),
            p99: percentile(&ttft, 0.99).unwrap_or(f64::NAN),
            tok_s: of.iter().map(|r| r.tok_s).sum::<f64>() / n,
            hit: of.iter().map(|r| r.hit).sum::<f64>() / n,
            queued: of.iter().map(|r| r.queued).sum(),
            refused: of.iter().map(|r| r.refused).sum(),
            errors: of.iter().map(|r| r.errors).sum(),
            sent: of.iter().map(|r| r.sent).sum(),
        });
    }
    out
}

/// The issue's "Done when" on the pooled rows of one load: `inference` against the best other
/// policy (TTFT p99 ratio, tok/s ratio) and its hit rate against unbounded ketama's.
fn done_when(pooled: &[Pooled]) -> Option<String> {
    let inf = pooled.iter().find(|p| p.policy == "inference")?;
    let others = || pooled.iter().filter(|p| p.policy != "inference");
    let p99 = others().min_by(|a, b| a.p99.total_cmp(&b.p99))?;
    let tok = others().max_by(|a, b| a.tok_s.total_cmp(&b.tok_s))?;
    let hit = pooled.iter().find(|p| p.policy == "ketama prefix ε=off").map_or(f64::NAN, |k| inf.hit / k.hit);
    Some(format!(
        "| {:.1}× | {:.0} / {:.0} ({}) = {:.2} | {:.0} / {:.0} ({}) = {:.3} | {:.0} % | {:.0} / {} |",
        inf.load,
        inf.p99 * 1000.0,
        p99.p99 * 1000.0,
        p99.policy,
        inf.p99 / p99.p99,
        inf.tok_s,
        tok.tok_s,
        tok.policy,
        inf.tok_s / tok.tok_s,
        hit * 100.0,
        inf.queued,
        inf.refused
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = env_num("FLEET_SECONDS", 20.0);
    let capacity = match std::env::var("FLEET_CAPACITY").ok().and_then(|v| v.parse::<f64>().ok()) {
        Some(c) => c,
        None => capacity(env_num("FLEET_CAPACITY_SECONDS", 15.0)).await,
    };
    let only = std::env::var("FLEET_POLICIES").ok();
    println!("capacity: {capacity:.1} requests/s (closed loop, 96 clients, least_inflight); {seconds} s per cell");
    println!("sim: {}", SIM.join(" "));
    println!();
    println!("| load | seed | policy | TTFT p50 | TTFT p99 | tok/s | prefix hit | max/mean load | queued | refused | errors | sent |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let seeds: Vec<u64> = std::env::var("FLEET_SEED")
        .unwrap_or_else(|_| "0,1,2".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let loads: Vec<f64> = match std::env::var("FLEET_LOADS") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![0.5, 0.9, 1.2],
    };
    let mut pooled = Vec::new();
    let mut checks = Vec::new();
    for &load in &loads {
        let mut rows = Vec::new();
        for &seed in &seeds {
            for &(name, yaml) in POLICIES {
                if only.as_deref().is_some_and(|o| !o.split(',').any(|p| name.starts_with(p.trim()))) {
                    continue;
                }
                // FLEET_INFERENCE replaces the inference policy's settings (for exploring them).
                let custom = std::env::var("FLEET_INFERENCE").ok().filter(|_| name == "inference");
                let yaml = custom.as_deref().unwrap_or(yaml);
                let r = cell(name, yaml, load, capacity * load, seconds, seed).await;
                println!(
                    "| {:.1}× | {} | {} | {:.0} ms | {:.0} ms | {:.0} | {:.1} % | {:.2} | {:.0} | {} | {} | {} |",
                    r.load,
                    r.seed,
                    r.policy,
                    r.p50 * 1000.0,
                    r.p99 * 1000.0,
                    r.tok_s,
                    r.hit * 100.0,
                    r.max_mean,
                    r.queued,
                    r.refused,
                    r.errors,
                    r.sent
                );
                rows.push(r);
            }
        }
        let p = pool(&rows);
        checks.extend(done_when(&p));
        pooled.extend(p);
    }
    println!();
    println!("Pooled over seeds {seeds:?} (TTFT percentiles of every served request; tok/s and prefix hit averaged; queued, refused, errors, sent summed):");
    println!();
    println!("| load | policy | TTFT p50 | TTFT p99 | tok/s | prefix hit | queued | refused | errors | sent |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &pooled {
        println!(
            "| {:.1}× | {} | {:.0} ms | {:.0} ms | {:.0} | {:.1} % | {:.0} | {} | {} | {} |",
            r.load,
            r.policy,
            r.p50 * 1000.0,
            r.p99 * 1000.0,
            r.tok_s,
            r.hit * 100.0,
            r.queued,
            r.refused,
            r.errors,
            r.sent
        );
    }
    if !checks.is_empty() {
        println!();
        println!("Done when, pooled: `inference` against the best other policy:");
        println!();
        println!("| load | TTFT p99 (ms) | tok/s | prefix hit ÷ ketama ε=off | queued / refused |");
        println!("|---|---|---|---|---|");
        checks.iter().for_each(|c| println!("{c}"));
    }
}
