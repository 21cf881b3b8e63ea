//! `providers[].lora`: the gateway learns which replica serves which adapter (`/v1/models`,
//! `parent`) and which has it hot (`vllm:lora_requests_info`), sends an adapter's requests
//! only where it is served, keeps them where it is loaded, and carries on when a replica's
//! answers are garbage. (The choice itself, bounded-load spreading included, is unit tested in
//! `src/fleet/lora/`.)

use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::raw_http::read_message;
use crate::common::{spawn_sim, Proc};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const ALICE: &str = "sk-lora-alice-0123456789";
const BOB: &str = "sk-lora-bob-0123456789";

/// A provider over `backends` with `round_robin` (which alone would spread every adapter over
/// every replica) and adapter learning every 100 ms.
fn config(backends: &[String]) -> String {
    config_with(backends, "balance: round_robin")
}

/// The same with another balance.
fn config_with(backends: &[String], balance: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"base\", \"b\"] }}\n\
         providers:\n  - {{ name: sim, url: \"http://vllm.test/v1\", backends: [{}], health: {{ enabled: false }}, \
         {balance}, lora: {{ refresh: 100ms }} }}\n",
        list.join(", ")
    )
}

async fn chat(gw: &Gw, key: &str, model: &str) -> u16 {
    let body = json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let r = reqwest::Client::new().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await;
    r.unwrap().status().as_u16()
}

async fn backends(gw: &Gw) -> Vec<Value> {
    let h: Value = reqwest::get(gw.admin_url("/health")).await.unwrap().json().await.unwrap();
    h["providers"][0]["backends"].as_array().unwrap().clone()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < Duration::from_secs(15), "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Chat completions a sim answered with 200 and with 404.
async fn answered(sim: &Proc) -> (u64, u64) {
    let text = reqwest::get(sim.url("/metrics")).await.unwrap().text().await.unwrap();
    let count = |status: &str| {
        let series = format!("mcas_sim_requests_total{{endpoint=\"chat_completions\",status=\"{status}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    (count("200"), count("404"))
}

async fn loads(sim: &Proc) -> u64 {
    let text = reqwest::get(sim.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix("mcas_sim_lora_loads_total ")).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn an_adapter_goes_only_to_replicas_serving_it() {
    let mut sims = Vec::new();
    for lora in ["a,b", "b,c", "c"] {
        sims.push(spawn_sim(&["--models", "base", "--lora", lora, "--max-loras", "2", "--tokens", "2"]).await);
    }
    let gw = spawn_gateway("", &config(&sims.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>()), &[]).await;
    wait_for("every replica's adapters learned", async || {
        backends(&gw).await.iter().all(|b| b["lora"]["served"].is_array())
    })
    .await;
    assert_eq!(backends(&gw).await[1]["lora"]["served"], json!(["b", "c"]));
    for _ in 0..9 {
        assert_eq!(chat(&gw, ALICE, "a").await, 200);
    }
    assert_eq!(answered(&sims[0]).await, (9, 0));
    for _ in 0..9 {
        assert_eq!(chat(&gw, BOB, "b").await, 200);
    }
    let (on_first, on_second) = (answered(&sims[0]).await.0 - 9, answered(&sims[1]).await.0);
    assert_eq!(on_first + on_second, 9);
    assert_eq!(answered(&sims[2]).await, (0, 0), "the replica without a or b got none");
    // The base model is not an adapter: round robin over all three, as before.
    for _ in 0..3 {
        assert_eq!(chat(&gw, ALICE, "base").await, 200);
    }
    assert_eq!(answered(&sims[2]).await, (1, 0));
    // Permissions go by the adapter's own name.
    assert_eq!(chat(&gw, BOB, "a").await, 403);
    assert_eq!(chat(&gw, BOB, "c").await, 403);
}

/// A request for `model` sent straight to `sim` (bypassing the gateway) that runs 4 s.
fn long_request(sim: &Proc, model: &str) -> tokio::task::JoinHandle<u16> {
    let url = sim.url("/v1/chat/completions");
    let body = json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "long"}]});
    tokio::spawn(async move {
        let r = reqwest::Client::new().post(url).header("x-sim-ttft-ms", "4000").json(&body).send().await.unwrap();
        r.status().as_u16()
    })
}

#[tokio::test]
async fn an_adapter_stays_on_the_replica_that_has_it_loaded() {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(spawn_sim(&["--models", "base", "--lora", "a,b,c", "--max-loras", "1", "--tokens", "2"]).await);
    }
    let gw = spawn_gateway("", &config(&sims.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>()), &[]).await;
    // Another client loads `a` on replica 1 and `b` on replica 2 (one slot each), wherever the
    // ring would have put them (both there by chance: 1 in 9).
    let long = [long_request(&sims[1], "a"), long_request(&sims[2], "b")];
    wait_for("a and b seen loaded", async || {
        let b = backends(&gw).await;
        b[1]["lora"]["hot"] == json!(["a"]) && b[2]["lora"]["hot"] == json!(["b"]) && b[0]["lora"]["served"].is_array()
    })
    .await;
    for _ in 0..6 {
        assert_eq!(chat(&gw, ALICE, "a").await, 200);
        assert_eq!(chat(&gw, ALICE, "b").await, 200);
    }
    assert_eq!(answered(&sims[0]).await.0, 0, "replica 0 loaded nothing");
    for (i, l) in long.into_iter().enumerate() {
        assert_eq!(l.await.unwrap(), 200, "long request {i}");
    }
    for s in &sims[1..] {
        assert_eq!(answered(s).await.0, 7);
        assert_eq!(loads(s).await, 1, "loaded once, for the long request");
    }
}

/// With `balance: inference` the adapters a replica has loaded are read from the inference
/// scrape's answer (one fetch of the metrics per round, not two).
#[tokio::test]
async fn with_inference_the_loaded_adapters_come_from_its_scrape() {
    let sim = spawn_sim(&["--models", "base", "--lora", "a,b", "--max-loras", "1", "--tokens", "2"]).await;
    let balance = "balance: inference, inference: { scrape: { interval: 100ms } }";
    let gw = spawn_gateway("", &config_with(&[sim.addr.to_string()], balance), &[]).await;
    let long = long_request(&sim, "b");
    wait_for("b seen loaded", async || {
        let b = backends(&gw).await;
        b[0]["lora"]["hot"] == json!(["b"]) && b[0]["lora"]["served"] == json!(["a", "b"])
    })
    .await;
    assert_eq!(chat(&gw, ALICE, "b").await, 200);
    assert_eq!(long.await.unwrap(), 200);
}

/// A replica that answers chat completions but garbage on its model list and metrics;
/// counts those two fetches.
async fn garbage_replica(fetched: Arc<Mutex<u32>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let fetched = fetched.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_message(&mut s, &mut buf).await.is_none() {
                    return;
                }
                let body = if buf.starts_with(b"GET ") {
                    *fetched.lock().unwrap() += 1;
                    "<html>\u{1} {\"data\": [ vllm:lora_requests_info{running_lora_adapters=\"a".to_string()
                } else {
                    json!({"id": "x", "object": "chat.completion", "model": "a",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                    .to_string()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_answers_cost_nothing_but_the_view() {
    let sim = spawn_sim(&["--models", "base", "--lora", "a", "--tokens", "2"]).await;
    let fetched = Arc::new(Mutex::new(0));
    let bad = garbage_replica(fetched.clone()).await;
    let gw = spawn_gateway("", &config(&[sim.addr.to_string(), bad]), &[]).await;
    wait_for("two rounds on the garbage replica", async || {
        *fetched.lock().unwrap() >= 4 && backends(&gw).await[0]["lora"]["served"] == json!(["a"])
    })
    .await;
    let b = backends(&gw).await;
    assert_eq!((&b[1]["lora"]["served"], &b[1]["lora"]["hot"]), (&Value::Null, &json!([])), "nothing learned");
    // Unknown counts as serving (the garbage replica may take `a`); every request succeeds.
    for _ in 0..6 {
        assert_eq!(chat(&gw, ALICE, "a").await, 200);
    }
    assert_eq!(backends(&gw).await[0]["lora"]["served"], json!(["a"]), "the good view is kept");
}
