//! Issue 3 end to end against `mcas-sim`: every way of presenting a key, hashed and plain keys,
//! expiry and overlap, model globs and the filtered `/v1/models`, each per-key limit reached
//! and released, exact token accounting for streams with and without `include_usage`, the
//! `x-ratelimit-*` headers, reload (rotation under load, carried-over counters, a bad config),
//! the per-address brute-force guard, and a grep for secrets after a run.

use crate::common::gateway::{admin_section, check, spawn_gateway, spawn_gateway_with_admin_token, Gw, ADMIN_TOKEN};
use crate::common::{spawn_sim, Proc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "sk-alice-0123456789abcdef";
const HASHED_KEY: &str = "sk-bob-fedcba9876543210";
const PROMPT_MARK: &str = "purple-elephant-prompt-7731";

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn chat(stream: bool, include_usage: bool) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": format!("hello {PROMPT_MARK}")}],
        "model": "sim-model", "stream": stream});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn provider(sim: &Proc) -> String {
    format!(
        "providers:\n  - {{ name: vllm, url: \"http://{}/v1\", models: [\"*\"], timeouts: {{ read: 1s }} }}\n",
        sim.addr
    )
}

async fn metrics(gw: &Gw) -> String {
    // The token is ignored by gateways without one.
    client().get(gw.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap()
}

async fn post(gw: &Gw, key: &str, body: &Value) -> reqwest::Response {
    client().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(body).send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

/// Status, `error.code` and `Retry-After` of a refusal.
async fn refusal(r: reqwest::Response) -> (u16, String, Option<String>) {
    let status = r.status().as_u16();
    let retry = header(&r, "retry-after");
    let v: Value = r.json().await.unwrap();
    if status == 429 {
        assert_eq!(v["error"]["type"], "rate_limit_exceeded", "{v}");
    }
    (status, v["error"]["code"].as_str().unwrap_or("").to_string(), retry)
}

#[tokio::test]
async fn every_way_of_presenting_a_key() {
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n  - {{ name: bob, key_sha256: \"{}\", models: [\"*\"] }}\n{}routes:\n  - {{ path: \"/ws\", provider: vllm, websocket: true }}\n  - {{ path: \"/v1/*\", provider: by_model, websocket: true }}\n",
        sha(HASHED_KEY),
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let c = client();
    for key in [KEY, HASHED_KEY] {
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&chat(false, false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.post(gw.url("/v1/chat/completions")).header("x-api-key", key).json(&chat(false, false));
        assert_eq!(r.send().await.unwrap().status(), 200);
        // A query key on a plain request is not a credential.
        let r = c.post(gw.url(&format!("/v1/chat/completions?api_key={key}"))).json(&chat(false, false));
        assert_eq!(refusal(r.send().await.unwrap()).await.1, "missing_api_key");
    }
    // WebSocket: the key in the query, then as a subprotocol entry; both removed upstream.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?api_key={KEY}", gw.addr)).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    // (tungstenite splits the offer on "," without trimming: no spaces here.)
    for offered in [format!("openai-insecure-api-key.{HASHED_KEY},chat"), format!("api_key.{KEY},chat")] {
        let mut req = format!("ws://{}/ws", gw.addr).into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", offered.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        // The sim accepts the first protocol it is offered: the key entry never reached it.
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
        ws.send(Message::text("yo")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("yo"));
    }
    let mut req = format!("ws://{}/ws?api_key=wrong", gw.addr).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "chat".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err(), "a wrong key opened a WebSocket");
    // What the upstream receives for an upgrade: no api_key in the query, no key protocol.
    let r = c
        .get(gw.url(&format!("/v1/echo?a=1&api_key={KEY}&b=2")))
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-protocol", format!("api_key.{KEY}, chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/v1/echo?a=1&b=2");
    assert_eq!(v["headers"]["sec-websocket-protocol"], "chat");
    assert!(!v.to_string().contains(KEY), "the key reached the upstream: {v}");
}

#[tokio::test]
async fn expiry_overlap_and_messages() {
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "keys:\n  - {{ name: old, key: k-old, models: [\"*\"], expires: \"2020-01-01T00:00:00Z\" }}\n  - {{ name: next, key: k-next, models: [\"*\"], not_before: \"2999-01-01T00:00:00Z\" }}\n  - {{ name: current, key: k-cur, models: [\"*\"], expires: \"2999-01-01T00:00:00Z\" }}\n  - {{ name: overlap, key: k-over, models: [\"*\"], not_before: \"2020-01-01T00:00:00Z\" }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let r = post(&gw, "k-old", &chat(false, false)).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "expired_api_key");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"), "{v}");
    let r = post(&gw, "k-next", &chat(false, false)).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "api_key_not_yet_valid");
    assert!(v["error"]["message"].as_str().unwrap().contains("not valid yet"), "{v}");
    // Two keys valid at once: the overlap rotation relies on.
    for k in ["k-cur", "k-over"] {
        assert_eq!(post(&gw, k, &chat(false, false)).await.status(), 200);
    }
    let m = metrics(&gw).await;
    for reason in ["expired", "not_yet_valid"] {
        assert!(m.contains(&format!("mcas_auth_failures_total{{reason=\"{reason}\"}} 1")), "{m}");
    }
}

#[tokio::test]
async fn model_globs_and_filtered_model_list() {
    let sim = spawn_sim(&["--models", "llama-3,llama-4,qwen-2,gpt-x"]).await;
    let rest = format!(
        "keys:\n  - {{ name: llama, key: k-llama, models: [\"llama-*\", \"qwen-?\"] }}\n  - {{ name: all, key: k-all, models: [\"*\"] }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let ids = |v: Value| -> Vec<String> {
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    let r = client().get(gw.url("/v1/models")).bearer_auth("k-llama").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(ids(v), vec!["llama-3", "llama-4", "qwen-2"]);
    // A model outside the key's globs does not exist for it (issue 10: 404, not 403).
    let r = client().get(gw.url("/v1/models/gpt-x")).bearer_auth("k-llama").send().await.unwrap();
    assert_eq!(refusal(r).await.1, "model_not_found");
    let v: Value = client().get(gw.url("/v1/models")).bearer_auth("k-all").send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(v).len(), 4);
    let mut body = chat(false, false);
    body["model"] = json!("gpt-x");
    let (s, code, _) = refusal(post(&gw, "k-llama", &body).await).await;
    assert_eq!((s, code.as_str()), (403, "model_not_allowed"));
    body["model"] = json!("llama-4");
    assert_eq!(post(&gw, "k-llama", &body).await.status(), 200);
}

#[tokio::test]
async fn requests_per_window_reached_and_released_with_headers() {
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "limits: {{ window: 2s, defaults: {{ rpm: 1000, tpm: 100000 }} }}\nkeys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ rpm: 3 }} }}\n  - {{ name: free, key: k-free, models: [\"*\"], limits: {{ rpm: 50 }} }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let t0 = Instant::now();
    for remaining in ["2", "1", "0"] {
        let r = post(&gw, KEY, &chat(false, false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining-requests").as_deref(), Some(remaining));
        assert!(header(&r, "x-ratelimit-reset-requests").unwrap().ends_with('s'));
        // tpm comes from the defaults.
        assert_eq!(header(&r, "x-ratelimit-limit-tokens").as_deref(), Some("100000"));
        assert!(header(&r, "x-ratelimit-remaining-tokens").is_some());
        assert!(header(&r, "x-ratelimit-reset-tokens").is_some());
    }
    let r = post(&gw, KEY, &chat(false, false)).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests").as_deref(), Some("0"));
    let (s, code, retry) = refusal(r).await;
    assert_eq!((s, code.as_str()), (429, "rate_limit_requests"));
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Other keys are not affected; gateway-made errors carry the headers too.
    assert_eq!(post(&gw, "k-free", &chat(false, false)).await.status(), 200);
    let r = client().post(gw.url("/v1/chat/completions")).bearer_auth("k-free").body("{bad").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "x-ratelimit-limit-requests").as_deref(), Some("50"));
    // Upstream errors, passed on (500) or answered by the gateway (504), carry them as well.
    for (fail, status) in [("error", 500), ("hang", 504)] {
        let r = client().post(gw.url("/v1/chat/completions")).bearer_auth("k-free").header("x-sim-fail", fail);
        let r = r.json(&chat(false, false)).send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(header(&r, "x-ratelimit-limit-requests").as_deref(), Some("50"), "{fail}");
    }
    // Released when the window ends.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed())).await;
    let r = post(&gw, KEY, &chat(false, false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests").as_deref(), Some("2"));
    let m = metrics(&gw).await;
    assert!(m.contains("mcas_limit_refusals_total{key=\"alice\",reason=\"rate_limit_requests\"} 1"), "{m}");
}

/// An upstream that sends its own `x-request-id` and `x-ratelimit-*` fields (as OpenAI does):
/// the gateway's replace them, each written once, for a key with limits; for a key without,
/// the upstream's rate-limit fields pass on. Fields that only share the prefix stay.
#[tokio::test]
async fn the_gateways_own_answer_fields_replace_the_upstreams() {
    use crate::common::raw_http::read_message;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((_, len)) = read_message(&mut s, &mut buf).await {
                    buf.drain(..len);
                    let body = r#"{"id":"x","object":"chat.completion","model":"sim-model","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Request-Id: upstream-id\r\n\
                         x-ratelimit-remaining-requests: 999\r\nX-RateLimit-Limit-Tokens: 5\r\n\
                         x-ratelimit-other: kept\r\nx-rest: kept\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ rpm: 3, tpm: 1000 }} }}\n  - {{ name: free, key: k-free, models: [\"*\"] }}\nproviders:\n  - {{ name: up, url: \"http://{addr}/v1\", models: [\"*\"] }}\n"
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let all = |r: &reqwest::Response, name: &str| -> Vec<String> {
        r.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    };
    let r = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).header("x-request-id", "client-id");
    let r = r.json(&chat(false, false)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", gw.proc.logs());
    assert_eq!(all(&r, "x-request-id"), ["client-id"]);
    assert_eq!(all(&r, "x-ratelimit-remaining-requests"), ["2"]);
    assert_eq!(all(&r, "x-ratelimit-limit-requests"), ["3"]);
    assert_eq!(all(&r, "x-ratelimit-limit-tokens"), ["1000"]);
    assert_eq!(all(&r, "x-ratelimit-remaining-tokens").len(), 1);
    assert_eq!(all(&r, "x-ratelimit-other"), ["kept"]);
    assert_eq!(all(&r, "x-rest"), ["kept"]);
    assert!(r.text().await.unwrap().contains("total_tokens"));
    // A key without limits: the gateway writes no rate-limit fields, the upstream's pass on.
    let r = post(&gw, "k-free", &chat(false, false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(all(&r, "x-request-id").len(), 1);
    assert_ne!(all(&r, "x-request-id"), ["upstream-id"]);
    assert_eq!(all(&r, "x-ratelimit-remaining-requests"), ["999"]);
    assert_eq!(all(&r, "x-ratelimit-limit-tokens"), ["5"]);
    assert!(all(&r, "x-ratelimit-limit-requests").is_empty());
}

/// The SSE events of a body, as JSON with the per-response `id` and `created` removed.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            let mut v: Value = serde_json::from_str(d).unwrap_or(Value::String(d.to_string()));
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
                o.remove("created");
            }
            v
        })
        .collect()
}

#[tokio::test]
async fn tokens_are_counted_exactly_for_streams_with_and_without_include_usage() {
    let sim = spawn_sim(&["--tokens", "7"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ tpm: 60 }} }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let c = client();
    let direct = |body: Value| {
        let c = c.clone();
        let url = sim.url("/v1/chat/completions");
        async move { c.post(url).json(&body).send().await.unwrap().text().await.unwrap() }
    };
    let usage: Value = serde_json::from_str::<Value>(&direct(chat(false, false)).await).unwrap()["usage"].clone();
    let (p, k) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert_eq!(k, 7);
    // What the client receives equals what the sim sends for the same request, with and
    // without include_usage — the usage event the gateway asked for is removed. The sim's
    // answers are fetched first, so that each request to the gateway follows the end of the
    // previous answer at once: its tokens are charged before that end reaches the client.
    let wants = [direct(chat(true, false)).await, direct(chat(true, true)).await];
    for (include, want) in [false, true].into_iter().zip(wants) {
        let via = post(&gw, KEY, &chat(true, include)).await;
        assert_eq!(via.status(), 200);
        let remaining: u64 = header(&via, "x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
        let via = via.text().await.unwrap();
        assert_eq!(events(&via), events(&want), "include_usage {include}:\n{via}\n---\n{want}");
        assert_eq!(via.contains("\"usage\":{"), include, "{via}");
        assert!(via.ends_with("data: [DONE]\n\n"));
        let used = if include { p + k } else { 0 };
        assert_eq!(remaining, 60 - used, "remaining tokens before request (include {include})");
    }
    let m = metrics(&gw).await;
    assert!(
        m.contains(&format!("mcas_tokens_total{{key=\"alice\",kind=\"prompt\",model=\"sim-model\"}} {}", 2 * p)),
        "{m}"
    );
    assert!(
        m.contains(&format!("mcas_tokens_total{{key=\"alice\",kind=\"completion\",model=\"sim-model\"}} {}", 2 * k)),
        "{m}"
    );
    // A large streamed body (> 64 KiB) is rewritten and counted the same way.
    let mut big = chat(true, false);
    big["messages"][0]["content"] = json!("z".repeat(100_000));
    let r = post(&gw, KEY, &big).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("\"usage\":{") && text.ends_with("data: [DONE]\n\n"), "{text}");
    // Over budget now (2 * (p + k) + the big prompt ≥ 60): refused until the window ends.
    let (s, code, retry) = refusal(post(&gw, KEY, &chat(false, false)).await).await;
    assert_eq!((s, code.as_str()), (429, "rate_limit_tokens"));
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn concurrency_slots_are_released_however_requests_end() {
    let sim = spawn_sim(&["--itl-ms", "50", "--tokens", "100"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ concurrency: 1 }} }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let c = client();
    let second_is_refused = || async {
        let (s, code, retry) = refusal(post(&gw, KEY, &chat(false, false)).await).await;
        assert_eq!((s, code.as_str(), retry.as_deref()), (429, "rate_limit_concurrency", Some("1")));
    };
    let eventually_free = || async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).header("x-sim-tokens", "1");
            if r.json(&chat(false, false)).send().await.unwrap().status() == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "the slot was never released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // 1. A stream holds the slot; the client leaves mid-stream; the slot comes back.
    let resp = post(&gw, KEY, &chat(true, false)).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    second_is_refused().await;
    drop(stream);
    eventually_free().await;
    // 2. A stream that ends normally.
    let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).header("x-sim-tokens", "3");
    let r = r.json(&chat(true, false)).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("[DONE]"));
    eventually_free().await;
    // 3. Upstream failures: an error status, a connection cut mid-stream, a hang (504).
    for fail in ["error", "close", "hang"] {
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).header("x-sim-fail", fail);
        let _ = r.json(&chat(true, false)).send().await.map(|r| async { r.bytes().await });
        eventually_free().await;
    }
    // 4. A request whose body is over 64 KiB holds exactly one slot.
    let mut big = chat(true, true);
    big["messages"][0]["content"] = json!("z".repeat(100_000));
    let resp = post(&gw, KEY, &big).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    second_is_refused().await;
    while stream.next().await.is_some() {}
    eventually_free().await;
    let m = metrics(&gw).await;
    assert!(m.contains("mcas_limit_refusals_total{key=\"alice\",reason=\"rate_limit_concurrency\"}"), "{m}");
}

fn rotation_config(sim: &Proc, keys: &str) -> String {
    format!("limits: {{ defaults: {{ rpm: 100000 }} }}\nkeys:\n{keys}{}", provider(sim))
}

#[tokio::test]
async fn rotation_under_load_and_reload_with_good_and_bad_configs() {
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let v1 = "  - { name: alice, key: \"sk-alice-1\", models: [\"*\"] }\n  - { name: svc, key: \"sk-svc\", models: [\"*\"] }\n";
    let gw = spawn_gateway_with_admin_token("", &rotation_config(&sim, v1), &[]).await;
    // Load from holders of the valid key during the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let good = match c.post(&url).bearer_auth("sk-svc").json(&chat(true, false)).send().await {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|t| t.contains("[DONE]")),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: u64 = header(&post(&gw, "sk-svc", &chat(false, false)).await, "x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    // Rotate alice's key (new key, same name) by SIGHUP, then by POST /reload.
    let v2 = "  - { name: alice, key: \"sk-alice-2\", models: [\"*\"] }\n  - { name: svc, key: \"sk-svc\", models: [\"*\"] }\n";
    std::fs::write(&gw.config, admin_section(&gw) + &rotation_config(&sim, v2)).unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &gw.proc.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while post(&gw, "sk-alice-2", &chat(false, false)).await.status() != 200 {
        assert!(Instant::now() < deadline, "SIGHUP reload did not take effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post(&gw, "sk-alice-1", &chat(false, false)).await.status(), 401);
    let v3 = "  - { name: alice, key: \"sk-alice-3\", models: [\"*\"] }\n  - { name: svc, key: \"sk-svc\", models: [\"*\"] }\n";
    std::fs::write(&gw.config, admin_section(&gw) + &rotation_config(&sim, v3)).unwrap();
    let r = client().post(gw.admin_url("/reload")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(post(&gw, "sk-alice-3", &chat(false, false)).await.status(), 200);
    assert_eq!(post(&gw, "sk-alice-2", &chat(false, false)).await.status(), 401);
    // The window of a key that stayed was carried over, not reset.
    let after: u64 = header(&post(&gw, "sk-svc", &chat(false, false)).await, "x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!(after < before, "svc's window was reset by the reload ({before} → {after})");
    // A bad config is rejected whole; the running one stays.
    std::fs::write(
        &gw.config,
        admin_section(&gw)
            + &rotation_config(&sim, "  - { name: alice, key: \"sk-new\", models: [\"*\"], limits: { rpm: 0 } }\n"),
    )
    .unwrap();
    let r = client().post(gw.admin_url("/reload")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"][0].as_str().unwrap().contains("keys[0].limits.rpm"), "{v}");
    assert_eq!(post(&gw, "sk-new", &chat(false, false)).await.status(), 401);
    assert_eq!(post(&gw, "sk-alice-3", &chat(false, false)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests with the valid key failed during rotation");
    assert!(ok.load(Ordering::Relaxed) > 20, "too little load: {}", ok.load(Ordering::Relaxed));
    let m = metrics(&gw).await;
    assert!(m.contains("mcas_config_reloads_total{result=\"ok\"} 2"), "{m}");
    assert!(m.contains("mcas_config_reloads_total{result=\"rejected\"} 1"), "{m}");
    assert!(gw.proc.logs().contains("keys[0].limits.rpm"), "the reason was not logged");
}

#[tokio::test]
async fn brute_force_guard_per_address() {
    let sim = spawn_sim(&[]).await;
    let keys = format!("keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n");
    let limits = "limits: { per_ip: { auth_failures_per_min: 5, cooloff: 2s } }\n";
    // Without trusted proxies, X-Forwarded-For is ignored: all failures count for 127.0.0.1.
    let gw = spawn_gateway("", &format!("{limits}{keys}{}", provider(&sim)), &[]).await;
    let c = client();
    let with_xff = |key: &str, xff: &str| {
        c.post(gw.url("/v1/chat/completions")).bearer_auth(key).header("x-forwarded-for", xff).json(&chat(false, false))
    };
    for i in 0..5 {
        let r = with_xff(&format!("sk-guess-{i}"), &format!("198.51.100.{i}")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let t0 = Instant::now();
    let (s, code, retry) = refusal(with_xff(KEY, "198.51.100.99").send().await.unwrap()).await;
    assert_eq!((s, code.as_str(), retry.as_deref()), (429, "too_many_auth_failures", Some("2")));
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed())).await;
    assert_eq!(post(&gw, KEY, &chat(false, false)).await.status(), 200, "the cooloff did not end");
    let m = metrics(&gw).await;
    assert!(m.contains("mcas_limit_refusals_total{key=\"none\",reason=\"too_many_auth_failures\"} 1"), "{m}");
    assert!(m.contains("mcas_auth_failures_total{reason=\"invalid\"} 5"), "{m}");
    drop(gw);

    // Behind a trusted proxy, each forwarded address has its own count.
    let gw = spawn_gateway(
        "trusted_proxies: [\"127.0.0.0/8\"]",
        &format!("limits: {{ per_ip: {{ rpm: 4, auth_failures_per_min: 3, cooloff: 1m }} }}\n{keys}{}", provider(&sim)),
        &[],
    )
    .await;
    let send = |key: &str, xff: &str| {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .json(&chat(false, false))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send("sk-guess", "203.0.113.7").await.unwrap().status(), 401);
    }
    assert_eq!(refusal(send(KEY, "203.0.113.7").await.unwrap()).await.1, "too_many_auth_failures");
    assert_eq!(send(KEY, "203.0.113.8").await.unwrap().status(), 200, "another address was blocked");
    // A forged entry left of the real client does not help (the right-most untrusted counts).
    assert_eq!(refusal(send(KEY, "10.9.9.9, 203.0.113.7").await.unwrap()).await.1, "too_many_auth_failures");
    // Per-address request rate: 4 per minute, 203.0.113.8 used one already.
    for _ in 0..3 {
        assert_eq!(send(KEY, "203.0.113.8").await.unwrap().status(), 200);
    }
    assert_eq!(refusal(send(KEY, "203.0.113.8").await.unwrap()).await.1, "rate_limit_ip_requests");
}

#[tokio::test]
async fn no_key_hash_or_prompt_in_logs_metrics_or_error_bodies() {
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "limits: {{ defaults: {{ rpm: 3 }} }}\nkeys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"sim-*\"] }}\n  - {{ name: bob, key_sha256: \"{}\", models: [\"*\"], limits: {{ concurrency: 5, rpm: 100 }} }}\n{}  - {{ name: dead, url: \"http://127.0.0.1:{}/v1\", models: [\"dead-*\"] }}\nroutes:\n  - {{ path: \"/ws\", provider: vllm, websocket: true }}\n  - {{ path: \"/deadws\", provider: dead, websocket: true }}\n  - {{ path: \"/v1/*\", provider: by_model }}\n",
        sha(HASHED_KEY),
        provider(&sim),
        crate::common::free_port()
    );
    let gw = spawn_gateway("", &rest, &[("RUST_LOG", "debug")]).await;
    let mut bodies = String::new();
    let wrong = "sk-wrong-but-plausible-key-4242";
    for key in [KEY, HASHED_KEY, wrong, KEY, KEY, KEY] {
        for stream in [false, true] {
            let r = post(&gw, key, &chat(stream, false)).await;
            bodies.push_str(&format!("{:?}", r.headers()));
            bodies.push_str(&r.text().await.unwrap());
        }
    }
    let mut forbidden = chat(false, false);
    forbidden["model"] = json!("no-such-model");
    bodies.push_str(&post(&gw, HASHED_KEY, &forbidden).await.text().await.unwrap());
    let _ = tokio_tungstenite::connect_async(format!("ws://{}/ws?api_key={HASHED_KEY}", gw.addr)).await.unwrap();
    let _ = tokio_tungstenite::connect_async(format!("ws://{}/ws?api_key={wrong}", gw.addr)).await;
    // An upstream failure makes Pingora log the request target: the query key is gone by then.
    let dead = tokio_tungstenite::connect_async(format!("ws://{}/deadws?api_key={HASHED_KEY}", gw.addr)).await;
    assert!(dead.is_err());
    let m = metrics(&gw).await;
    assert!(m.contains("mcas_limit_refusals_total{key=\"alice\""), "the run did not reach a limit: {m}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = gw.proc.logs();
    assert!(logs.contains("\"key\":\"bob\""), "{logs}");
    for secret in [KEY, HASHED_KEY, wrong, &sha(KEY), &sha(HASHED_KEY), &sha(wrong), PROMPT_MARK, "purple-elephant"] {
        assert!(!logs.contains(secret), "log holds {secret}");
        assert!(!m.contains(secret), "metrics hold {secret}");
        // Responses may quote the prompt (the sim's answers do not), never a key.
        if secret != PROMPT_MARK && secret != "purple-elephant" {
            assert!(!bodies.contains(secret), "a response holds {secret}");
        }
    }
}

#[test]
fn check_reports_limit_errors_with_their_paths() {
    let yaml = "server: { trusted_proxies: [\"10.0.0.0/99\"] }\nlimits: { window: 1ms, defaults: { rpm: 0 }, per_ip: { cooloff: 0s, max_tracked: 2 } }\nkeys:\n  - { name: a, key: k, models: [\"*\"], limits: { tpm: 0, concurrency: 0 } }\n";
    let (code, out) = check(yaml, &[]);
    assert_eq!(code, 1);
    for path in [
        "server.trusted_proxies[0]",
        "limits.window",
        "limits.defaults.rpm",
        "limits.per_ip.cooloff",
        "limits.per_ip.max_tracked",
        "keys[0].limits.tpm",
        "keys[0].limits.concurrency",
    ] {
        assert!(out.contains(path), "{path} missing from:\n{out}");
    }
    let (code, out) = check("limits: { per_ip: { rmp: 3 } }\nkeys:\n  - { name: a, key: k, models: [\"*\"] }\n", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("limits.per_ip: unknown field \"rmp\""), "{out}");
    let ok = "server: { trusted_proxies: [\"10.0.0.0/8\", \"::1\"] }\nlimits: { window: 30s, defaults: { rpm: 60, tpm: 1000, concurrency: 4 }, per_ip: { rpm: 600, auth_failures_per_min: 20, cooloff: 5m } }\nkeys:\n  - { name: a, key: k, models: [\"*\"], limits: { rpm: 5 } }\n";
    let (code, out) = check(ok, &[]);
    assert_eq!((code, out.trim()), (0, "config ok"));
}

#[tokio::test]
async fn token_budget_is_released_when_the_window_ends() {
    let sim = spawn_sim(&["--tokens", "20"]).await;
    let rest = format!(
        "limits: {{ window: 2s }}\nkeys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ tpm: 10 }} }}\n{}",
        provider(&sim)
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let t0 = Instant::now();
    let r = post(&gw, KEY, &chat(false, false)).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens").as_deref(), Some("10"));
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let (s, code, retry) = refusal(post(&gw, KEY, &chat(false, false)).await).await;
    assert_eq!((s, code.as_str()), (429, "rate_limit_tokens"));
    assert!(["1", "2"].contains(&retry.as_deref().unwrap()), "{retry:?}");
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed())).await;
    let r = post(&gw, KEY, &chat(false, false)).await;
    assert_eq!(r.status(), 200, "the token budget was not released");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens").as_deref(), Some("10"));
}

/// 10,000 configured keys, each allowed one request per window: every key's first request
/// passes (no key is charged for another's traffic), every second one is refused.
#[tokio::test]
async fn ten_thousand_keys_each_counted_on_its_own() {
    let sim = spawn_sim(&["--tokens", "1"]).await;
    let mut keys = String::from("limits: { defaults: { rpm: 1 } }\nkeys:\n");
    for i in 0..10_000 {
        keys.push_str(&format!("  - {{ name: k{i}, key: sk-many-{i:05}, models: [\"*\"] }}\n"));
    }
    let gw = spawn_gateway("", &format!("{keys}{}", provider(&sim)), &[]).await;
    let picked: Vec<usize> = (0..300).map(|i| (i * 7919) % 10_000).collect();
    let c = client();
    let statuses = futures_util::future::join_all(picked.iter().map(|i| {
        let req =
            c.post(gw.url("/v1/chat/completions")).bearer_auth(format!("sk-many-{i:05}")).json(&chat(false, false));
        async move { req.send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for i in picked.iter().take(20) {
        let r = post(&gw, &format!("sk-many-{i:05}"), &chat(false, false)).await;
        assert_eq!(r.status(), 429);
    }
}
