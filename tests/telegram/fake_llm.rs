//! A small OpenAI-compatible upstream for what `mcas-sim` cannot show: it records every
//! request body (so tests see the history the runner sent) and answers by the question:
//! "long" → ~9,000 characters in paragraphs, "slow" → six chunks 400 ms apart, otherwise an
//! echo. Streams are SSE `data:` chunks ending with `[DONE]`, like vLLM's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};

pub const KEY: &str = "gw-test-key-SECRET";
pub const MODELS: &[&str] = &["sim-small", "sim-large"];

#[derive(Default)]
struct State {
    requests: Vec<Value>,
    /// When set, completions answer 429 with this `Retry-After`.
    rate_limited: Option<u64>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(serve(req, state).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        FakeLlm { addr, state }
    }

    /// Base URL as the runner's `MCAS_GATEWAY_URL` (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn set_rate_limited(&self, retry_after: u64) {
        self.state.lock().unwrap().rate_limited = Some(retry_after);
    }
}

/// The answer the fake gives to `question`, and the pause between chunks.
pub fn answer_to(question: &str) -> (Vec<String>, Duration) {
    if question.contains("long") {
        let paragraph =
            |i: usize| format!("Paragraph {i}. {}", "All work and no play makes a dull answer. ".repeat(17));
        let chunks = (0..12).map(|i| format!("{}\n\n", paragraph(i).trim_end())).collect();
        (chunks, Duration::from_millis(5))
    } else if question.contains("slow") {
        let chunks = (1..=6).map(|i| format!("Part {i} of a slow answer. ")).collect();
        (chunks, Duration::from_millis(400))
    } else {
        let text = format!("You said: {question}.");
        (text.split_inclusive(' ').map(String::from).collect(), Duration::from_millis(10))
    }
}

fn full(status: u16, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

async fn serve(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Response<Body> {
    let authorized = req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"));
    if !authorized {
        return full(
            401,
            json!({"error": {"message": "bad key", "type": "authentication_error", "code": "invalid_api_key"}}),
        );
    }
    let path = req.uri().path().to_string();
    if path == "/v1/models" {
        let data: Vec<Value> = MODELS.iter().map(|m| json!({"id": m, "object": "model"})).collect();
        return full(200, json!({"object": "list", "data": data}));
    }
    if path != "/v1/chat/completions" {
        return full(404, json!({"error": {"message": "no route", "type": "not_found", "code": "not_found"}}));
    }
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let limited = {
        let mut s = state.lock().unwrap();
        s.requests.push(body.clone());
        s.rate_limited
    };
    if let Some(secs) = limited {
        let mut r = full(429, json!({"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limited"}}));
        r.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
        return r;
    }
    assert_eq!(body["stream"], json!(true), "the runner always streams");
    let question = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
    let (chunks, pause) = answer_to(question);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let role = json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]});
        let _ = tx.send(Bytes::from(format!("data: {role}\n\n"))).await;
        for c in chunks {
            tokio::time::sleep(pause).await;
            let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": c}}]});
            if tx.send(Bytes::from(format!("data: {chunk}\n\n"))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}
