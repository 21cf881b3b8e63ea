//! mcas-sim's replica model (`--max-seqs` …): the scheduler's queue, KV use and the vLLM
//! metric names, observed from outside through `/metrics` while requests run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::common::{spawn_sim, Proc};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// The value of an unlabelled series in the sim's `/metrics`.
async fn metric(sim: &Proc, name: &str) -> f64 {
    let text = client().get(sim.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Starts a streamed chat and returns once its first event arrived (it is then running).
async fn start_stream(url: String, content: &'static str, tokens: u32) -> reqwest::Response {
    let body = json!({"model": "sim-model", "stream": true, "max_tokens": tokens,
        "messages": [{"role": "user", "content": content}]});
    client().post(url).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn one_seat_queues_the_second_request_and_reports_it() {
    let sim = spawn_sim(&["--max-seqs", "1", "--decode-ms-per-step", "5", "--tokens", "400"]).await;
    let mut first = start_stream(sim.url("/v1/chat/completions"), "first request", 400).await.bytes_stream();
    // Its role chunk arrives with the first token: the request is running.
    first.next().await.unwrap().unwrap();
    let second = start_stream(sim.url("/v1/chat/completions"), "second request", 400);
    let second = tokio::spawn(second);
    // The second one waits for the seat; poll until the sim reports it (no fixed sleep).
    let mut waiting = 0.0;
    for _ in 0..200 {
        waiting = metric(&sim, "vllm:num_requests_waiting").await;
        if waiting == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(waiting, 1.0);
    assert_eq!(metric(&sim, "vllm:num_requests_running").await, 1.0);
    assert!(metric(&sim, "vllm:kv_cache_usage_perc").await > 0.0);
    // The first client leaves: its seat goes to the second at the next step.
    drop(first);
    let mut second = second.await.unwrap().bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = second.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(metric(&sim, "vllm:num_requests_running").await, 0.0);
    assert_eq!(metric(&sim, "vllm:num_requests_waiting").await, 0.0);
    assert_eq!(metric(&sim, "vllm:kv_cache_usage_perc").await, 0.0);
}

#[tokio::test]
async fn under_kv_pressure_every_answer_still_completes() {
    // 4 blocks of 16 chars (4 tokens each): the sequences cannot all hold their KV at once,
    // so they wait or are preempted (the unit tests of src/sim/engine.rs pin which).
    let sim =
        spawn_sim(&["--max-seqs", "4", "--kv-blocks", "4", "--block-chars", "16", "--decode-ms-per-step", "1"]).await;
    let ask = |n: u32| {
        let body = json!({"model": "sim-model", "max_tokens": 12,
            "messages": [{"role": "user", "content": format!("prompt number {n}")}]});
        client().post(sim.url("/v1/chat/completions")).json(&body).send()
    };
    let (a, b, c) = tokio::join!(ask(1), ask(2), ask(3));
    for r in [a, b, c] {
        let v: serde_json::Value = r.unwrap().json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 12);
    }
    assert_eq!(metric(&sim, "vllm:kv_cache_usage_perc").await, 0.0);
    metric(&sim, "vllm:num_preemptions_total").await;
    // Prompt tokens are looked up in the prefix cache (tokens, as vLLM counts them).
    assert!(metric(&sim, "vllm:prefix_cache_queries_total").await > 0.0);
}

/// A streamed answer's usage chunk tells where its first token waited (docs/sim.md).
#[tokio::test]
async fn the_usage_chunk_carries_where_the_first_token_waited() {
    let sim = spawn_sim(&["--max-seqs", "2", "--prefill-us-per-token", "1000", "--decode-ms-per-step", "2"]).await;
    let body = json!({"model": "sim-model", "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": 3, "messages": [{"role": "user", "content": "word ".repeat(80)}]});
    let text = client().post(sim.url("/v1/chat/completions")).json(&body).send().await.unwrap().text().await.unwrap();
    let usage_event = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"));
    let t = &usage_event["x_sim_timing"];
    let uncached = usage_event["usage"]["prompt_tokens"].as_f64().unwrap()
        - usage_event["usage"]["prompt_tokens_details"]["cached_tokens"].as_f64().unwrap();
    // 1 ms a token of prefill, nothing ahead of it, alone in its step.
    assert_eq!(t["own_prefill_ms"].as_f64(), Some(uncached), "{t}");
    assert_eq!((t["batch_prefill_ms"].as_f64(), t["running"].as_u64()), (Some(0.0), Some(1)), "{t}");
    assert!(t["first_token_ms"].as_f64().unwrap() >= uncached, "{t}");
}
