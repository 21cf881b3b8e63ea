//! Accounting cannot be dodged by compression: on every route whose answers the gateway reads
//! (usage, the models list, MCP endpoint rewrites), the upstream is asked for
//! `Accept-Encoding: identity` on each path an answer can take (Pingora's proxy loop, the
//! bodies over 64 KiB (once a subrequest pipe, now the proxy loop with a larger retry buffer), the keepalive relay, MCP), and an answer that comes
//! compressed anyway (`mcas-sim --force-gzip`) is refused with a 502, never passed on
//! uncounted.

use crate::common::gateway::{key_yaml, spawn_gateway, Gw};
use crate::common::{spawn_sim, Proc};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "client-key-compression-01";
const PROVIDER_KEY: &str = "provider-key-compression-01";
const SESSION_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// `/v1/*` with keepalives (streamed requests take the gateway's relay), `/plain/*` without
/// (streamed requests stay in Pingora's loop), `/mcp/*` to the same sim as an MCP route.
async fn gateway(sim: &Proc) -> Gw {
    let rest = format!(
        "{keys}mcp: {{ session_key: \"${{MCAS_MCP_SESSION_KEY}}\" }}\n\
         providers:\n  - {{ name: vllm, url: \"http://{addr}\", api_key: \"{PROVIDER_KEY}\", models: [\"*\"] }}\n\
         routes:\n\
         \x20 - {{ path: \"/v1/*\", provider: vllm, heartbeat: 1s }}\n\
         \x20 - {{ path: \"/plain/*\", provider: vllm, strip_prefix: \"/plain\" }}\n\
         \x20 - {{ path: \"/mcp/*\", provider: vllm, strip_prefix: \"/mcp\", kind: mcp }}\n",
        keys = key_yaml("alice", KEY),
        addr = sim.addr,
    );
    spawn_gateway("", &rest, &[("MCAS_MCP_SESSION_KEY", SESSION_KEY_HEX)]).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn chat(stream: bool, filler: usize) -> Value {
    json!({"messages": [{"role": "user", "content": "x".repeat(filler)}], "model": "sim-model", "stream": stream})
}

/// (what, method, path, body): one request per path an answer can take.
fn requests(path_end: &str) -> Vec<(&'static str, reqwest::Method, String, Option<Value>)> {
    use reqwest::Method;
    let chat_path = |p: &str| format!("{p}/{path_end}");
    vec![
        ("proxied", Method::POST, chat_path("/v1"), Some(chat(false, 10))),
        ("large body (> 64 KiB)", Method::POST, chat_path("/v1"), Some(chat(false, 100_000))),
        ("keepalive relay", Method::POST, chat_path("/v1"), Some(chat(true, 10))),
        ("proxied stream", Method::POST, chat_path("/plain/v1"), Some(chat(true, 10))),
        ("mcp", Method::POST, "/mcp/echo".to_string(), Some(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))),
    ]
}

async fn send(gw: &Gw, method: reqwest::Method, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = client()
        .request(method, gw.url(path))
        .bearer_auth(KEY)
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("te", "gzip")
        .header("accept", "application/json, text/event-stream");
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn observed_routes_ask_the_upstream_for_identity() {
    let sim = spawn_sim(&["--api-key", PROVIDER_KEY]).await;
    let gw = gateway(&sim).await;
    for (what, method, path, body) in requests("echo") {
        let resp = send(&gw, method, &path, body.as_ref()).await;
        assert_eq!(resp.status(), 200, "{what}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["headers"]["accept-encoding"], "identity", "{what}: {v}");
        assert!(v["headers"].get("te").is_none(), "{what}: {v}");
    }
    let resp = send(&gw, reqwest::Method::GET, "/v1/echo", None).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["accept-encoding"], "identity", "GET: {v}");
}

/// The misbehaving upstream is real: `--force-gzip` answers gzip to a client that asked for
/// identity, a non-streamed answer and a stream alike, and the bytes decode to the usual JSON.
#[tokio::test]
async fn the_sim_compresses_even_when_asked_for_identity() {
    use std::io::Read;
    let sim = spawn_sim(&["--force-gzip"]).await;
    for stream in [false, true] {
        let mut body = chat(stream, 10);
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let resp = client()
            .post(sim.url("/v1/chat/completions"))
            .header("accept-encoding", "identity")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        let raw = resp.bytes().await.unwrap();
        assert!(!raw.windows(7).any(|w| w == b"\"usage\""), "usage readable without decoding");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text).unwrap();
        assert!(text.contains("\"usage\":{\"prompt_tokens\""), "stream {stream}: {text}");
    }
}

#[tokio::test]
async fn a_compressed_answer_is_refused_never_passed_on_uncounted() {
    let sim = spawn_sim(&["--api-key", PROVIDER_KEY, "--force-gzip"]).await;
    let gw = gateway(&sim).await;
    let mut all = requests("chat/completions");
    all.push(("models list", reqwest::Method::GET, "/v1/models".to_string(), None));
    for (what, method, path, body) in all {
        let resp = send(&gw, method, &path, body.as_ref()).await;
        assert_eq!(resp.status(), 502, "{what}");
        assert!(resp.headers().get("content-encoding").is_none(), "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
        let v: Value = resp.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("compressed"), "{what}: {v}");
        assert!(v["error"]["code"].is_string() && v["error"]["type"].is_string(), "{what}: {v}");
    }
    // Nothing went through, so nothing can have gone through uncounted: no token series, no
    // answer of the provider's in the 2xx class (the /health poll is the gateway's own).
    let m = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!m.contains("mcas_tokens_total{"), "{m}");
    let served = |l: &&str| l.starts_with("mcas_requests_total{provider=\"vllm\"") && l.contains("status=\"2xx\"");
    assert!(!m.lines().any(|l| served(&l)), "{m}");
}
