//! mcas-sim on its own: each test starts the built binary on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{spawn_sim, Proc};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn chat(content: &str) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": content}]})
}

async fn post(sim: &Proc, path: &str, body: &Value) -> (reqwest::StatusCode, HeaderMap, Value) {
    let resp = client()
        .post(sim.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap())
}

/// SSE events as they arrived: (arrival time, payload after `data: `), and whether the body
/// ended in an error (a cut connection).
struct Sse {
    events: Vec<(Instant, String)>,
    cut: bool,
}

impl Sse {
    fn json(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect()
    }
    fn done(&self) -> bool {
        self.events.last().is_some_and(|(_, d)| d == "[DONE]")
    }
    fn content(&self) -> String {
        self.json()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    }
}

async fn read_sse(resp: reqwest::Response) -> Sse {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let (mut buf, mut events, mut cut) = (String::new(), Vec::new(), false);
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => buf.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => {
                cut = true;
                break;
            }
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data = event.trim_end().strip_prefix("data: ").unwrap().to_string();
            events.push((Instant::now(), data));
        }
    }
    Sse { events, cut }
}

async fn stream(sim: &Proc, path: &str, body: Value, headers: &[(&str, &str)]) -> Sse {
    let mut req = client().post(sim.url(path)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    read_sse(resp).await
}

#[tokio::test]
async fn chat_completion_has_content_and_usage() {
    let sim = spawn_sim(&["--tokens", "5"]).await;
    let (status, headers, v) = post(&sim, "/v1/chat/completions", &chat("hello world")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-mcas-replica"],
        format!("sim-{}", sim.addr.port()).as_str()
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sim-model");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tok1 tok2 tok3 tok4 tok5 "
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Prompt text "<|user|>hello world" is 19 bytes: ceil(19 / 4) = 5 tokens.
    let u = &v["usage"];
    assert_eq!(
        (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(u["total_tokens"], 10);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn text_completion_under_a_base_path() {
    let sim = spawn_sim(&["--tokens", "3", "--models", "a,b"]).await;
    let body = json!({"model": "b", "prompt": "abcdefgh"});
    let (status, _, v) = post(&sim, "/openai/v1/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "b");
    assert_eq!(v["choices"][0]["text"], "tok1 tok2 tok3 ");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn stream_without_usage_ends_with_done() {
    let sim = spawn_sim(&["--tokens", "4"]).await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let sse = stream(&sim, "/v1/chat/completions", body, &[]).await;
    assert!(sse.done() && !sse.cut);
    let chunks = sse.json();
    assert_eq!(chunks.len(), 1 + 4 + 1, "role, tokens, finish");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(sse.content(), "tok1 tok2 tok3 tok4 ");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stream_with_include_usage_adds_a_usage_chunk() {
    let sim = spawn_sim(&["--tokens", "3"]).await;
    let body = json!({"prompt": "abcd", "stream": true, "stream_options": {"include_usage": true}});
    let sse = stream(&sim, "/v1/completions", body, &[]).await;
    assert!(sse.done());
    let chunks = sse.json();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 1);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["total_tokens"], 4);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let texts: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(texts, "tok1 tok2 tok3 ");
}

#[tokio::test]
async fn tokens_are_paced_by_itl() {
    let sim = spawn_sim(&["--tokens", "6", "--itl-ms", "50"]).await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let sse = stream(&sim, "/v1/chat/completions", body, &[]).await;
    assert!(sse.done());
    let first = sse.events.first().unwrap().0;
    let last = sse.events.last().unwrap().0;
    // Six tokens: five gaps of 50 ms between the first event and the last.
    let want = Duration::from_millis(50 * 5 * 8 / 10);
    assert!(last - first >= want, "events came {:?} apart", last - first);
}

#[tokio::test]
async fn header_overrides_tokens_and_ttft() {
    let sim = spawn_sim(&[]).await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let start = Instant::now();
    let headers = [("x-sim-tokens", "2"), ("x-sim-ttft-ms", "150")];
    let sse = stream(&sim, "/v1/chat/completions", body, &headers).await;
    assert_eq!(sse.content(), "tok1 tok2 ");
    let first = sse.events[0].0 - start;
    assert!(
        first >= Duration::from_millis(150),
        "first event after {first:?}"
    );
}

#[tokio::test]
async fn max_tokens_caps_the_answer() {
    let sim = spawn_sim(&["--tokens", "16"]).await;
    let mut body = chat("hi");
    body["max_tokens"] = json!(3);
    let (_, _, v) = post(&sim, "/v1/chat/completions", &body).await;
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    body["max_completion_tokens"] = json!(2);
    body["stream"] = json!(true);
    let sse = stream(&sim, "/v1/chat/completions", body, &[]).await;
    assert_eq!(sse.content(), "tok1 tok2 ");
    let chunks = sse.json();
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn api_key_is_required_on_v1() {
    let sim = spawn_sim(&["--api-key", "k1"]).await;
    let c = client();
    for auth in [None, Some("Bearer nope")] {
        let mut req = c.get(sim.url("/v1/models"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["message"].is_string());
    }
    let ok = c
        .get(sim.url("/v1/models"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        c.get(sim.url("/health")).send().await.unwrap().status(),
        200
    );

    let strict = spawn_sim(&["--api-key", "k1", "--health-requires-key"]).await;
    assert_eq!(
        c.get(strict.url("/health")).send().await.unwrap().status(),
        401
    );
    let ok = c
        .get(strict.url("/health"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let sim = spawn_sim(&[]).await;
    let c = client();
    let resp = c
        .post(sim.url("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let mut body = chat("hi");
    body["model"] = json!("gpt-nope");
    let (status, _, v) = post(&sim, "/v1/chat/completions", &body).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");

    let resp = c.get(sim.url("/no/such/path")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/path"));
}

#[tokio::test]
async fn models_lists_every_model() {
    let sim = spawn_sim(&["--models", "a,b"]).await;
    let v: Value = client()
        .get(sim.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "mcas-sim");
}

#[tokio::test]
async fn echo_reports_body_hash_and_headers() {
    let sim = spawn_sim(&[]).await;
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = hex::encode(Sha256::digest(&body));
    let mut headers = HeaderMap::new();
    headers.append("x-rep", HeaderValue::from_static("a"));
    headers.append("x-rep", HeaderValue::from_static("b"));
    headers.insert("X-Mixed-Case", HeaderValue::from_static("v"));
    let resp = client()
        .put(sim.url("/base/echo?q=1&r=2"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/base/echo?q=1&r=2");
    assert_eq!(v["body_len"], 1 << 20);
    assert_eq!(v["body_sha256"], want);
    assert_eq!(v["headers"]["x-rep"], "a, b");
    assert_eq!(v["headers"]["x-mixed-case"], "v");
    assert_eq!(v["replica"], format!("sim-{}", sim.addr.port()));
}

#[tokio::test]
async fn forced_error_and_status() {
    let sim = spawn_sim(&[]).await;
    let c = client();
    let resp = c
        .post(sim.url("/v1/chat/completions"))
        .header("x-sim-fail", "error")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    let resp = c
        .get(sim.url("/v1/models"))
        .header("x-sim-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn forced_close_cuts_the_stream_half_way() {
    let sim = spawn_sim(&["--tokens", "8"]).await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let sse = stream(
        &sim,
        "/v1/chat/completions",
        body,
        &[("x-sim-fail", "close")],
    )
    .await;
    assert!(sse.cut, "the body should end in an error");
    assert!(!sse.done());
    assert_eq!(sse.content(), "tok1 tok2 tok3 tok4 ");
}

#[tokio::test]
async fn forced_hang_never_answers() {
    let sim = spawn_sim(&[]).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = c
        .post(sim.url("/v1/chat/completions"))
        .header("x-sim-fail", "hang")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The replica still serves others.
    assert_eq!(
        c.get(sim.url("/health")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn replica_header_on_every_answer() {
    let sim = spawn_sim(&["--replica-id", "r-7"]).await;
    let c = client();
    for path in ["/health", "/v1/models", "/metrics", "/nope"] {
        let resp = c.get(sim.url(path)).send().await.unwrap();
        assert_eq!(resp.headers()["x-mcas-replica"], "r-7", "{path}");
    }
}

#[tokio::test]
async fn prefix_cache_reports_hits() {
    let sim = spawn_sim(&["--block-chars", "16"]).await;
    let long = "the same long system prompt shared by many requests";
    let (_, h, v) = post(&sim, "/v1/chat/completions", &chat(long)).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(h["x-sim-prefix-hit-tokens"], "0");
    let (_, h, v) = post(&sim, "/v1/chat/completions", &chat(long)).await;
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // "<|user|>" + 51 chars = 59 bytes: three full 16-byte blocks = 48 bytes = 12 tokens.
    assert_eq!(cached, 12);
    assert_eq!(h["x-sim-prefix-hit-tokens"], "12");
    let (_, _, v) = post(
        &sim,
        "/v1/chat/completions",
        &chat("a different prompt of some length"),
    )
    .await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let metrics = client()
        .get(sim.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vllm:prefix_cache_hits_total 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mcas_sim_requests_total{endpoint="chat_completions",status="200"} 3"#)
    );
    assert!(metrics.contains("vllm:num_requests_running 0"));
}

async fn ws_connect(
    sim: &Proc,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}{path}", sim.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[tokio::test]
async fn websocket_echoes_frames_and_close_code() {
    let sim = spawn_sim(&[]).await;
    let mut ws = ws_connect(&sim, "/ws").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 255])
    );
    ws.send(Message::Ping(b"p".to_vec())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec())
    );
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason, "bye");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_push_and_subprotocol() {
    let sim = spawn_sim(&[]).await;
    let mut req = format!("ws://{}/v1/ws?push_ms=20", sim.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("first, second"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "first");
    assert_eq!(
        resp.headers()["x-mcas-replica"],
        format!("sim-{}", sim.addr.port()).as_str()
    );
    for n in 1..=3 {
        let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text(format!("push {n}")));
    }
}
