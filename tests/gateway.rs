//! The gateway end to end against `mcas-sim`: completions streamed and not, chunk timing,
//! credential replacement, path joining, large bodies, HTTPS upstreams, error statuses,
//! `--check`, and the admin endpoints.

use crate::common::gateway::{check, check_file, key_yaml, provider_yaml, spawn_gateway, Gw};
use crate::common::{free_port, spawn_sim, Proc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const KEY: &str = "client-key-0123456789";
const PROVIDER_KEY: &str = "provider-key-abcdef";

async fn gw_for(sim: &Proc, base: &str, extra: &str) -> Gw {
    let url = format!("http://{}{base}", sim.addr);
    let rest = format!("{}{}", key_yaml("alice", KEY), provider_yaml("vllm", &url, PROVIDER_KEY));
    spawn_gateway(extra, &rest, &[]).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn chat(stream: bool, include_usage: bool) -> Value {
    let mut body =
        json!({"messages": [{"role": "user", "content": "hello there"}], "model": "sim-model", "stream": stream});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    (status, body)
}

#[tokio::test]
async fn non_streamed_completion_through_gateway() {
    let sim = spawn_sim(&["--replica-id", "r1"]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    let resp =
        client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(false, false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mcas-replica"], "r1");
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn streamed_completion_arrives_token_by_token() {
    let sim = spawn_sim(&["--itl-ms", "50", "--tokens", "10"]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    let t0 = Instant::now();
    let resp =
        client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(true, true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let (mut text, mut content_times) = (String::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let s = String::from_utf8_lossy(&chunk).to_string();
        if s.contains("\"content\"") {
            content_times.push(t0.elapsed());
        }
        text.push_str(&s);
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "stream did not end with [DONE]: {text}");
    assert!(text.contains("\"usage\""), "usage chunk missing");
    let first = *content_times.first().unwrap();
    let last = *content_times.last().unwrap();
    // 10 tokens 50 ms apart: the first must be seen ≥ 360 ms before the last.
    assert!(last - first >= Duration::from_millis(360), "tokens were buffered: first {first:?} last {last:?}");
    assert!(content_times.len() >= 5, "only {} content reads", content_times.len());
}

#[tokio::test]
async fn provider_key_replaces_client_key_and_paths_join() {
    let sim = spawn_sim(&[]).await;
    let gw = gw_for(&sim, "/openai/v1", "").await;
    for (name, req) in [
        ("bearer", client().post(gw.url("/v1/echo?x=1")).bearer_auth(KEY)),
        ("x-api-key", client().post(gw.url("/v1/echo?x=1")).header("x-api-key", KEY)),
    ] {
        let resp = req.header("x-request-id", "req-42").json(&json!({"model": "m"})).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(resp.headers()["x-request-id"], "req-42");
        let v: Value = resp.json().await.unwrap();
        let h = &v["headers"];
        assert_eq!(h["authorization"], format!("Bearer {PROVIDER_KEY}"), "{name}");
        assert!(h.get("x-api-key").is_none(), "{name}: client key leaked");
        assert!(!v.to_string().contains(KEY), "{name}: client key reached the upstream");
        assert_eq!(v["path"], "/openai/v1/echo?x=1");
        assert_eq!(h["host"], sim.addr.to_string());
        assert_eq!(h["x-request-id"], "req-42");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
    // The client's own forwarding fields and id: the chain extended, the rest replaced, each
    // written once (the echo joins repeated fields with ", ").
    let req = client().post(gw.url("/v1/echo")).bearer_auth(KEY).header("x-request-id", "req-43");
    let req = req.header("X-Forwarded-For", "10.0.0.1, 10.0.0.2").header("x-forwarded-proto", "https");
    let v: Value = req.json(&json!({"model": "m"})).send().await.unwrap().json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], "req-43", "{v}");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1", "{v}");
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["authorization"], format!("Bearer {PROVIDER_KEY}"), "{v}");
}

/// The client's key reaches no upstream however the request carries it: `Authorization`
/// repeated or spelt in capitals, beside `x-api-key`, the scheme in lower case. A provider with
/// a key gets exactly its own `Authorization`; a provider without one gets none.
#[tokio::test]
async fn client_key_never_reaches_the_upstream_however_it_is_dressed() {
    let sim = spawn_sim(&[]).await;
    let keyed = gw_for(&sim, "", "").await;
    let url = format!("http://{}", sim.addr);
    let keyless =
        format!("{}providers:\n  - {{ name: vllm, url: \"{url}\", models: [\"*\"] }}\n", key_yaml("alice", KEY));
    let keyless = spawn_gateway("", &keyless, &[]).await;
    let dressed = |gw: &Gw| {
        let post = || client().post(gw.url("/v1/echo"));
        [
            (
                "twice",
                post()
                    .header("authorization", format!("Bearer {KEY}"))
                    .header("authorization", format!("Bearer {KEY}")),
            ),
            (
                "with another",
                post().header("authorization", format!("Bearer {KEY}")).header("authorization", "Basic b3RoZXI="),
            ),
            ("capitals", post().header("AUTHORIZATION", format!("bearer {KEY}"))),
            ("and x-api-key", post().bearer_auth(KEY).header("x-api-key", KEY)),
        ]
    };
    for (gw, want) in [(&keyed, Some(format!("Bearer {PROVIDER_KEY}"))), (&keyless, None)] {
        for (name, req) in dressed(gw) {
            let resp = req.json(&json!({"model": "m"})).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{name}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["headers"]["authorization"].as_str(), want.as_deref(), "{name}: {v}");
            assert!(v["headers"].get("x-api-key").is_none(), "{name}: {v}");
            assert!(!v.to_string().contains(KEY), "{name}: the client key reached the upstream: {v}");
        }
    }
}

fn big_body(size: usize) -> Vec<u8> {
    // The OpenAI SDK's order: messages first, model last.
    let filler = "x".repeat(size);
    serde_json::to_vec(&json!({"messages": [{"role": "user", "content": filler}], "model": "sim-model"})).unwrap()
}

#[tokio::test]
async fn bodies_of_every_size_arrive_byte_for_byte() {
    let sim = spawn_sim(&[]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    for size in [10, 60_000, 70_000, 1 << 20] {
        let body = big_body(size);
        let digest = hex::encode(Sha256::digest(&body));
        let resp = client()
            .post(gw.url("/v1/echo"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "size {size}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["body_len"], body.len(), "size {size}");
        assert_eq!(v["body_sha256"], digest, "size {size}");
    }
    // A large streamed completion goes through the same path and still streams.
    let mut req = chat(true, false);
    req["messages"][0]["content"] = json!("y".repeat(200_000));
    let resp = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("[DONE]"));
}

/// What reaches the upstream is the client's body byte for byte; a stream that did not ask
/// for `include_usage` gets exactly that member spliced in (the rest of the document, its
/// spacing, key order and escapes, untouched), for small and large (> 64 KiB) bodies alike.
#[tokio::test]
async fn forwarded_bodies_are_the_clients_bytes_with_include_usage_spliced() {
    let sim = spawn_sim(&[]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    let long = "z".repeat(100_000);
    let cases = [
        (
            "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"h\\u00e9\"} ],\n \"model\":\"sim-model\", \"temperature\": 1.0e0 }".to_string(),
            None,
        ),
        (
            "{\"model\":\"sim-model\", \"stream\": true ,\"stream_options\":{ }, \"n\" : 1}".to_string(),
            Some("{\"model\":\"sim-model\", \"stream\": true ,\"stream_options\":{\"include_usage\":true}, \"n\" : 1}".to_string()),
        ),
        (
            "{\"stream\":true,\"stream_options\":{\"include_usage\":false,\"x\":[]},\"model\":\"sim-model\"}".to_string(),
            Some("{\"stream\":true,\"stream_options\":{\"include_usage\":true,\"x\":[]},\"model\":\"sim-model\"}".to_string()),
        ),
        (
            format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"{long}\"}}], \"stream\":true,\"model\":\"sim-model\"}}"),
            Some(format!("{{\"stream_options\":{{\"include_usage\":true}},\"messages\":[{{\"role\":\"user\",\"content\":\"{long}\"}}], \"stream\":true,\"model\":\"sim-model\"}}")),
        ),
    ];
    for (sent, want) in cases {
        let want = want.unwrap_or_else(|| sent.clone());
        let resp = client()
            .post(gw.url("/v1/echo"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(sent.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{sent:.80}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["body_len"], want.len(), "{sent:.80}");
        assert_eq!(v["body_sha256"], hex::encode(Sha256::digest(want.as_bytes())), "{sent:.80}");
    }
}

#[tokio::test]
async fn gateway_errors_have_openai_shape() {
    let sim = spawn_sim(&["--models", "sim-model"]).await;
    let url = format!("http://{}/v1", sim.addr);
    let rest = format!(
        "{}providers:\n  - {{ name: vllm, url: \"{url}\", models: [\"sim-*\"], timeouts: {{ read: 400ms }} }}\n  - {{ name: dead, url: \"http://127.0.0.1:{}/v1\", models: [\"dead-*\"] }}\n",
        key_yaml("alice", KEY),
        free_port()
    );
    let gw = spawn_gateway("max_body: 4KiB", &rest, &[]).await;
    let c = client();
    let post = |path: &str| c.post(gw.url(path)).bearer_auth(KEY).header("content-type", "application/json");

    let (s, b) = error_of(c.post(gw.url("/v1/chat/completions")).json(&chat(false, false)).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("missing_api_key")));
    let (s, b) = error_of(
        c.post(gw.url("/v1/chat/completions")).bearer_auth("wrong").json(&chat(false, false)).send().await.unwrap(),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert!(!b.to_string().contains("wrong"), "error echoes the key");
    let (s, b) = error_of(post("/v1/chat/completions").body("{not json").send().await.unwrap()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_json")));
    let (s, _) = error_of(c.get(gw.url("/nowhere")).bearer_auth(KEY).send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, b) = error_of(post("/v1/chat/completions").body(r#"{"model":"gpt-9"}"#).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (s, b) = error_of(post("/v1/chat/completions").body(big_body(8000)).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (413, Some("request_too_large")));
    let (s, b) = error_of(post("/v1/chat/completions").body(r#"{"model":"dead-1"}"#).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["type"].as_str()), (502, Some("upstream_error")));
    let t = Instant::now();
    let (s, b) = error_of(
        post("/v1/chat/completions").header("x-sim-fail", "hang").json(&chat(false, false)).send().await.unwrap(),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (504, Some("upstream_timeout")));
    assert!(t.elapsed() < Duration::from_secs(5));
    // The gateway still serves after all that.
    let ok = post("/v1/chat/completions").json(&chat(false, false)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn admin_health_and_metrics() {
    let sim = spawn_sim(&[]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    let c = client();
    for stream in [false, true] {
        let r =
            c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(stream, stream)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let h: Value = c.get(gw.admin_url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert!(h["version"].is_string());
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["providers"][0]["name"], "vllm");
    assert_eq!(h["providers"][0]["backends"][0]["healthy"], true);
    let m = c.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "mcas_requests_total{provider=\"vllm\",route=\"/v1/*\",status=\"2xx\"} 2",
        "mcas_request_duration_seconds_bucket",
        "mcas_upstream_ttfb_seconds_bucket",
        "mcas_inflight_requests 0",
        "mcas_tokens_total{key=\"alice\"",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    assert!(!m.contains(KEY) && !m.contains(PROVIDER_KEY));
    // The access log is written by its own thread (every 20 ms), after the answer went out.
    let mut logs = gw.proc.logs();
    for _ in 0..50 {
        if logs.contains("\"key\":\"alice\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        logs = gw.proc.logs();
    }
    assert!(logs.contains("\"key\":\"alice\""), "no access log line: {logs}");
    assert!(!logs.contains(KEY) && !logs.contains(PROVIDER_KEY), "a key reached the log");
}

#[tokio::test]
async fn https_upstream_with_generated_certificate() {
    let cert = crate::common::tls::TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    // Gateway A terminates TLS in front of the sim; gateway B reaches A over HTTPS.
    let tls = cert.listen_yaml("");
    let rest_a =
        format!("{}{}", key_yaml("b", "inner-key"), provider_yaml("sim", &format!("http://{}/v1", sim.addr), ""));
    let a = spawn_gateway_tls(&tls, &rest_a).await;
    let outer = |ca: &str| {
        format!(
            "{}providers:\n  - {{ name: a, url: \"https://localhost:{}/v1\", api_key: inner-key, models: [\"*\"] {ca} }}\n",
            key_yaml("alice", KEY),
            a.addr.port()
        )
    };
    let trusted =
        spawn_gateway("", &outer(&format!(", tls: {{ ca_file: \"{}\" }}", cert.cert_path.display())), &[]).await;
    let chat_status =
        |gw: &Gw| client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(false, false)).send();
    assert_eq!(chat_status(&trusted).await.unwrap().status(), 200);
    let untrusted = spawn_gateway("", &outer(""), &[]).await;
    assert_eq!(chat_status(&untrusted).await.unwrap().status(), 502, "an unverified certificate was accepted");
}

/// A TLS listener offers HTTP/2: JSON bodies of every size (small, and larger than 64 KiB),
/// streamed completions, the heartbeat relay and refusals all work over h2 streams; with
/// `http2: false` the same client gets HTTP/1.1.
#[tokio::test]
async fn http2_clients_on_a_tls_listener() {
    let cert = crate::common::tls::TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n  - {{ path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 1s }}\n",
        key_yaml("alice", KEY),
        sim.addr
    );
    let tls = |h2: bool| cert.listen_yaml(&format!("http2: {h2}"));
    let https = reqwest::Client::builder().add_root_certificate(cert.ca()).build().unwrap();
    let gw = spawn_gateway_tls(&tls(true), &rest).await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.addr.port());
    let resp = https.post(url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(false, false)).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2));
    assert!(resp.headers().contains_key("x-request-id"));
    for size in [10, 70_000, 1 << 20] {
        let body = big_body(size);
        let resp = https
            .post(url("/v1/echo"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "size {size}: {text} {}", gw.proc.logs());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["body_sha256"], hex::encode(Sha256::digest(&body)), "size {size}");
    }
    for path in ["/v1/chat/completions", "/hb/v1/chat/completions"] {
        let resp = https
            .post(url(path))
            .bearer_auth(KEY)
            .header("x-sim-itl-ms", "400")
            .header("x-sim-tokens", "4")
            .json(&chat(true, true))
            .send()
            .await
            .unwrap();
        assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2), "{path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("\"usage\"") && text.trim_end().ends_with("data: [DONE]"), "{path}: {text}");
    }
    let resp = https.post(url("/v1/chat/completions")).json(&chat(false, false)).send().await.unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 401, "{body}");
    let h1 = spawn_gateway_tls(&tls(false), &rest).await;
    let resp = https
        .post(format!("https://localhost:{}/v1/chat/completions", h1.addr.port()))
        .bearer_auth(KEY)
        .json(&chat(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_11));
}

/// A gateway listening with TLS: readiness is polled on its admin listener only.
async fn spawn_gateway_tls(tls: &str, rest: &str) -> Gw {
    crate::common::gateway::spawn_gateway_admin_only(tls, rest).await
}

#[test]
fn check_reports_each_problem_with_its_path() {
    let ok = "server: { listen: \"127.0.0.1:18080\" }\nadmin: { listen: \"127.0.0.1:18081\" }\nkeys:\n  - { name: alice, key: \"${ALICE_KEY}\", models: [\"*\"] }\nproviders:\n  - { name: vllm, url: \"http://127.0.0.1:8000/v1\", api_key: \"${MCAS_VLLM_KEY}\", models: [\"*\"] }\n";
    let (code, out) = check(ok, &[("ALICE_KEY", "a"), ("MCAS_VLLM_KEY", "v")]);
    assert_eq!((code, out.trim()), (0, "config ok"));
    let (code, out) = check(ok, &[("MCAS_VLLM_KEY", "v")]);
    assert_eq!(code, 1);
    assert!(out.contains("keys[0].key: environment variable ALICE_KEY is not set"), "{out}");
    let (code, out) = check(ok, &[("ALICE_KEY", "a"), ("MCAS_VLLM_KEY", "v"), ("MCAS_VLLM_URL_KEY", "w")]);
    assert_eq!(code, 1);
    assert!(out.contains("differ"), "{out}");
    assert!(!out.contains("\"v\"") && !out.contains("\"w\""), "secret echoed: {out}");
    let typo = "keys:\n  - { name: a, key: k, models: [\"*\"] }\n  - { name: b, key: k2, models: [\"*\"] }\n  - { name: c, key: k3, modles: [\"*\"] }\n";
    let (code, out) = check(typo, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("keys[2]: unknown field \"modles\""), "{out}");
    let rel = "keys:\n  - { name: a, key: k, models: [\"*\"] }\nproviders:\n  - { name: p, url: \"v1/x\" }\n";
    let (code, out) = check(rel, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("providers[0].url: relative URL without a base"), "{out}");
    let many = "server: { listen: nowhere, max_body: 12 parsecs }\nkeys: []\nroutes:\n  - { path: \"/v1/*\", provider: ghost }\n";
    let (code, out) = check(many, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("server.max_body"), "{out}");
    let (code, out) =
        check("server: { listen: nowhere }\nkeys: []\nroutes:\n  - { path: \"/v1/*\", provider: ghost }\n", &[]);
    assert_eq!(code, 1);
    for needle in ["server.listen[0]", "keys: at least one", "routes[0].provider"] {
        assert!(out.contains(needle), "{needle} missing from: {out}");
    }
    let (code, out) = check("server: [", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("invalid YAML"), "{out}");
}

#[test]
fn every_gateway_conf_file_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // conf/kubernetes/ holds manifests, checked (with the config they carry) by tests/container.rs.
        if !path.is_file() || !name.ends_with(".yaml") || name.starts_with("telegram") {
            continue;
        }
        let (code, out) = check_file(path.to_str().unwrap(), &[("ALICE_KEY", "a"), ("MCAS_VLLM_KEY", "v")]);
        assert_eq!(code, 0, "{name}: {out}");
        seen += 1;
    }
    assert!(seen >= 1);
}

async fn sim_running(sim: &Proc) -> i64 {
    let text = client().get(sim.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("vllm:num_requests_running "))
        .map(|v| v.trim().parse::<f64>().unwrap() as i64)
        .unwrap_or(-1)
}

#[tokio::test]
async fn client_disconnect_ends_the_upstream_request() {
    let sim = spawn_sim(&["--itl-ms", "100", "--tokens", "200"]).await;
    let gw = gw_for(&sim, "/v1", "").await;
    let resp =
        client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(true, false)).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(sim_running(&sim).await, 1, "the stream should be running upstream");
    drop(stream);
    // 200 tokens at 100 ms would take 20 s: the upstream must see the cancel long before.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim_running(&sim).await != 0 {
        assert!(Instant::now() < deadline, "upstream request still running after the client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("mcas_client_cancels_total{route=\"/v1/*\"} 1"), "{m}");
    assert!(m.contains("mcas_inflight_requests 0"), "{m}");
}

/// A gateway started on an address another process holds exits at once (status 1) with an
/// error naming the setting and the address, for the client listener and the admin one alike:
/// not Pingora's 30 s of bind retries ending in a listener thread that panics while the process
/// stays up, listening on nothing (src/server.rs, `listen_free`). The running one goes on.
#[tokio::test]
async fn a_start_on_a_taken_address_fails_at_once_naming_the_setting() {
    let sim = spawn_sim(&[]).await;
    let first = gw_for(&sim, "/v1", "").await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/v1", sim.addr);
    let rest = format!("{}{}", key_yaml("alice", KEY), provider_yaml("vllm", &url, PROVIDER_KEY));
    let free = || format!("127.0.0.1:{}", free_port());
    for (setting, listen, admin, taken) in [
        ("server.listen", first.addr.to_string(), free(), first.addr.to_string()),
        ("admin.listen", free(), first.admin.to_string(), first.admin.to_string()),
    ] {
        let d = dir.path().display();
        let yaml = format!(
            "server: {{ listen: \"{listen}\", threads: 1, pid_file: \"{d}/second.pid\", upgrade_sock: \"{d}/second.sock\" }}\n\
             admin: {{ listen: \"{admin}\" }}\n{rest}"
        );
        let path = dir.path().join("second.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mcas-gateway"))
            .args(["--config", path.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "{setting}: still running or wrong status after 10 s: {text}"
        );
        assert!(text.contains(&format!("{setting}: cannot listen on {taken}")), "{text}");
        assert!(text.contains("in use") && text.contains("--upgrade"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    let resp = client()
        .post(first.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
