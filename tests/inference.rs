//! `balance: inference`: scrapes that go wrong degrade to the gateway's own counts without an
//! error on the request path; the admission queue refuses at its deadline with 503 +
//! `Retry-After`, and a client that leaves the queue frees its place at once.
//! (Scoring, fairness and priority are unit tested in `src/fleet/inference/`.)

use crate::common::gateway::{spawn_gateway_with_admin_token, Gw, ADMIN_TOKEN};
use crate::common::raw_http::read_message;
use crate::common::spawn_sim;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const KEY: &str = "client-key-0123456789";
const PROVIDER_KEY: &str = "provider-key-abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn yaml(backends: &[String], inference: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - name: vllm\n    url: \"http://vllm.internal/v1\"\n    api_key: \"{PROVIDER_KEY}\"\n\
         \x20   backends: [{}]\n    balance: inference\n    inference: {inference}\n",
        list.join(", ")
    )
}

async fn admin_json(gw: &Gw, path: &str) -> Value {
    client().get(gw.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap()
}

async fn metric(gw: &Gw, prefix: &str) -> f64 {
    let text =
        client().get(gw.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < Duration::from_secs(15), "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a fake replica answers `GET /metrics`.
#[derive(Clone, Copy)]
enum Bad {
    Garbage,
    Huge,
    Slow,
    Missing,
}

/// A replica that answers chat completions and a broken `/metrics`; records the
/// `Authorization` header of each scrape.
async fn fake_replica(bad: Bad, seen: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some((head, _)) = read_message(&mut s, &mut buf).await else { return };
                let (ctype, body): (&str, Vec<u8>) = if head.starts_with("get /metrics") {
                    let auth = head.lines().find_map(|l| l.strip_prefix("authorization:")).unwrap_or("").trim();
                    seen.lock().unwrap().push(auth.to_string());
                    match bad {
                        Bad::Garbage => ("text/html", b"<html>\x00\xff not metrics {{{ </html>".to_vec()),
                        Bad::Huge => ("text/plain", "# filler line of a huge answer\n".repeat(80_000).into_bytes()),
                        Bad::Slow => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            ("text/plain", b"vllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n".to_vec())
                        }
                        Bad::Missing => {
                            ("text/plain", b"# TYPE up gauge\nup 1\nvllm:num_requests_running 2\n".to_vec())
                        }
                    }
                } else {
                    let answer = json!({"id": "x", "object": "chat.completion", "model": "sim-model",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
                    ("application/json", answer.to_string().into_bytes())
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn bad_scrapes_degrade_to_own_counts_without_request_errors() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut backends = Vec::new();
    for bad in [Bad::Garbage, Bad::Huge, Bad::Slow, Bad::Missing] {
        backends.push(fake_replica(bad, seen.clone()).await);
    }
    let gw = spawn_gateway_with_admin_token("", &yaml(&backends, "{ scrape: { interval: 100ms } }"), &[]).await;
    // Every replica is marked stale once its first scrape round ended.
    wait_for("all replicas stale", async || {
        let h = admin_json(&gw, "/health").await;
        let b = h["providers"][0]["backends"].as_array().unwrap().clone();
        metric(&gw, "mcas_inference_scrapes_total{provider=\"vllm\",result=\"failed\"}").await >= 4.0
            && b.iter().all(|b| b["inference"]["stale"] == true)
    })
    .await;
    let c = client();
    for i in 0..24 {
        let body = json!({"model": "sim-model", "max_tokens": 8,
            "messages": [{"role": "user", "content": format!("question {i} {}", "x".repeat(200))}]});
        let resp = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(metric(&gw, "mcas_inference_queue_refusals_total").await, 0.0);
    // The scrapes carried the provider key, never the client's.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|a| a == &format!("bearer {}", PROVIDER_KEY.to_lowercase())), "{seen:?}");
}

#[tokio::test]
async fn queue_refuses_at_its_deadline_and_a_leaving_client_frees_its_place() {
    // One seat; a replica with anyone waiting is saturated.
    let sim = spawn_sim(&["--max-seqs", "1", "--decode-ms-per-step", "20", "--tokens", "2000"]).await;
    let inference = "{ scrape: { interval: 50ms }, saturated: { waiting: 0, kv_cache: 1.0 }, \
                     queue: { max: 1, timeout: 1500ms } }";
    let gw = spawn_gateway_with_admin_token("", &yaml(&[sim.addr.to_string()], inference), &[]).await;
    wait_for("first scrape", async || {
        admin_json(&gw, "/health").await["providers"][0]["backends"][0]["inference"]["stale"] == false
    })
    .await;
    let stream = |text: &str| {
        let body = json!({"model": "sim-model", "stream": true, "messages": [{"role": "user", "content": text}]});
        client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send()
    };
    // A runs, B waits in the replica's own queue: the replica is saturated once scraped.
    let a = stream("a").await.unwrap();
    let b = tokio::spawn(stream("b"));
    wait_for("replica saturated", async || {
        admin_json(&gw, "/health").await["providers"][0]["backends"][0]["inference"]["waiting"] == 1.0
    })
    .await;
    // C waits in the gateway's queue (the only place), then its client leaves.
    let c = tokio::spawn(stream("c"));
    wait_for("c queued", async || metric(&gw, "mcas_inference_queue_depth{provider=\"vllm\"}").await == 1.0).await;
    c.abort();
    wait_for("c's place freed", async || metric(&gw, "mcas_inference_queue_depth{provider=\"vllm\"}").await == 0.0)
        .await;
    // Still saturated by B (re-read: a scrape may have come between).
    wait_for("replica still saturated", async || {
        let b = &admin_json(&gw, "/health").await["providers"][0]["backends"][0]["inference"];
        b["waiting"] == 1.0 && b["stale"] == false
    })
    .await;
    // D takes the freed place (not refused as full) and is refused at the deadline.
    let d = stream("d").await.unwrap();
    assert_eq!(d.status(), 503);
    assert_eq!(d.headers()["retry-after"], "1");
    let err: Value = d.json().await.unwrap();
    assert_eq!(err["error"]["code"], "overloaded", "{err}");
    assert_eq!(metric(&gw, "mcas_inference_queue_refusals_total{provider=\"vllm\",reason=\"deadline\"}").await, 1.0);
    assert_eq!(metric(&gw, "mcas_inference_queue_refusals_total{provider=\"vllm\",reason=\"queue_full\"}").await, 0.0);
    drop(a);
    b.abort();
}

/// The gateway learns a replica's decode step and prefill rate from the answers it relays
/// (`src/fleet/inference/seats.rs`) and shows them in `/health`.
#[tokio::test]
async fn health_shows_the_step_and_prefill_rate_learned_from_relayed_answers() {
    let sim =
        spawn_sim(&["--max-seqs", "4", "--decode-ms-per-step", "2", "--prefill-us-per-token", "50", "--tokens", "40"])
            .await;
    let inference = "{ scrape: { interval: 50ms } }";
    let gw = spawn_gateway_with_admin_token("", &yaml(&[sim.addr.to_string()], inference), &[]).await;
    let learned =
        async || admin_json(&gw, "/health").await["providers"][0]["backends"][0]["inference"]["learned"].clone();
    let before = learned().await;
    assert_eq!(before["step_ms"], Value::Null, "{before}");
    assert_eq!(before["prefill_us_per_token"], Value::Null, "{before}");
    // About 1,000 prompt tokens (4 bytes each) to a replica with free seats, 40 tokens of answer.
    let body = json!({"model": "sim-model", "stream": true, "max_tokens": 40,
        "messages": [{"role": "user", "content": "word ".repeat(800)}]});
    let resp = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let after = learned().await;
    assert!(after["step_ms"].as_f64().is_some_and(|s| s > 0.0), "{after}");
    assert!(after["prefill_us_per_token"].as_f64().is_some_and(|p| p > 0.0), "{after}");
    assert_eq!(after["steps_to_seat"], 0, "nothing in flight: {after}");
}
