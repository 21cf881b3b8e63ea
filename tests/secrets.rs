//! No secret at any log level: the gateway and the Telegram runner run at `RUST_LOG=trace`
//! (Pingora's header dumps, reqwest, hyper, rustls included) through streamed, non-streamed,
//! large-body, keepalive-relayed, WebSocket, MCP and error paths (401 with a wrong key in every
//! place a key can sit, 403, upstream down); then the whole log, every answer the clients got,
//! `/health` and `/metrics` are searched for every secret in clear, SHA-256 hex and base64.

use crate::common::gateway::spawn_gateway;
use crate::common::{free_port, python, spawn, spawn_sim, Proc};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "client-key-secrets-Alpha42";
const BOB_KEY: &str = "client-key-secrets-Bob777";
const WRONG_KEY: &str = "wrong-client-key-Zulu99";
const PROVIDER_KEY: &str = "provider-key-secrets-Kilo55";
const MCP_PROVIDER_KEY: &str = "mcp-provider-key-Lima66";
const SESSION_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Every form of `secret` that must not appear: clear text, SHA-256 hex (both cases), base64
/// (standard and URL-safe, padded or not).
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex = hex::encode(Sha256::digest(secret.as_bytes()));
    let mut out = vec![secret.to_string(), hex.to_uppercase(), hex];
    for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        out.push(e.encode(secret));
    }
    out
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        for f in forms(s) {
            if let Some(at) = text.find(&f) {
                let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                let to = (at + f.len() + 200).min(text.len());
                let to = (to..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
                panic!("{what} holds a form of {s:?} ({f}):\n…{}…", &text[from..to]);
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

fn chat(stream: bool, filler: usize) -> Value {
    json!({"messages": [{"role": "user", "content": "y".repeat(filler)}], "model": "sim-model", "stream": stream})
}

/// One replica of the SDK's MCP server (tests/mcp/server.py).
async fn mcp_server() -> Proc {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/server.py").display().to_string();
    let args = vec![script, "streamable-http".to_string(), port.to_string(), "r1".to_string()];
    let mut proc = spawn(python().to_str().unwrap(), &args, &[], addr);
    proc.wait_ready("/ready-probe").await.unwrap_or_else(|e| panic!("MCP server did not start: {e}"));
    proc
}

/// The SDK's client through the gateway: one session, two tool calls.
async fn mcp_client(url: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let out =
        tokio::process::Command::new(python()).arg(script).args(["streamable", url, KEY, "2"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("\"ok\": true"), "MCP client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A WebSocket through the gateway with the key in `how` (query or subprotocol); returns
/// what the handshake answered.
async fn websocket(url: &str, protocol: Option<&str>) -> String {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, resp)) => {
            ws.send(Message::text("hello")).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            assert!(matches!(echoed, Ok(Some(Ok(_)))), "no echo: {echoed:?}");
            let _ = ws.close(None).await;
            format!("{resp:?}")
        }
        Err(e) => format!("{e:?}"),
    }
}

/// Writes `bytes` on a fresh connection; returns what came back before the close.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn gateway_at_trace_logs_no_secret_on_any_path() {
    let sim = spawn_sim(&["--api-key", PROVIDER_KEY, "--tokens", "4"]).await;
    let mcp = mcp_server().await;
    let dead = free_port();
    let rest = format!(
        "keys:\n\
         \x20 - {{ name: alice, key: \"${{ALICE_KEY}}\", models: [\"*\"] }}\n\
         \x20 - {{ name: bob, key: \"{BOB_KEY}\", models: [\"other-*\"] }}\n\
         mcp: {{ session_key: \"${{MCAS_MCP_SESSION_KEY}}\" }}\n\
         providers:\n\
         \x20 - {{ name: vllm, url: \"http://{sim}\", api_key: \"${{MCAS_VLLM_KEY}}\", models: [\"*\"] }}\n\
         \x20 - {{ name: tools, url: \"http://{mcp}\", api_key: \"{MCP_PROVIDER_KEY}\" }}\n\
         \x20 - {{ name: down, url: \"http://127.0.0.1:{dead}\", api_key: \"{PROVIDER_KEY}\" }}\n\
         routes:\n\
         \x20 - {{ path: \"/v1/*\", provider: vllm, websocket: true }}\n\
         \x20 - {{ path: \"/beat/*\", provider: vllm, strip_prefix: \"/beat\", heartbeat: 1s }}\n\
         \x20 - {{ path: \"/mcp\", provider: tools, kind: mcp }}\n\
         \x20 - {{ path: \"/down/*\", provider: down, strip_prefix: \"/down\" }}\n",
        sim = sim.addr,
        mcp = mcp.addr,
    );
    let env = [
        ("RUST_LOG", "trace"),
        ("ALICE_KEY", KEY),
        ("MCAS_VLLM_KEY", PROVIDER_KEY),
        ("MCAS_MCP_SESSION_KEY", SESSION_KEY_HEX),
    ];
    let gw = spawn_gateway("", &rest, &env).await;
    let c = client();
    let mut answers = String::new();
    let mut record = |what: &str, status: u16, text: String| {
        answers.push_str(&format!("\n== {what}: {status}\n{text}"));
        status
    };
    let post = |path: &str, body: Value| c.post(gw.url(path)).json(&body);

    // Success paths: proxied, streamed, large body (> 64 KiB), keepalive relay, models list.
    for (what, req, want) in [
        ("non-streamed", post("/v1/chat/completions", chat(false, 10)).bearer_auth(KEY), 200),
        ("streamed", post("/v1/chat/completions", chat(true, 10)).header("x-api-key", KEY), 200),
        ("large body", post("/v1/chat/completions", chat(false, 100_000)).bearer_auth(KEY), 200),
        ("keepalive relay", post("/beat/v1/chat/completions", chat(true, 10)).bearer_auth(KEY), 200),
        ("models", c.get(gw.url("/v1/models")).bearer_auth(KEY), 200),
        // Refusals: a wrong key in every place one can sit, a model the key may not use, a
        // provider that is down.
        ("wrong bearer", post("/v1/chat/completions", chat(false, 10)).bearer_auth(WRONG_KEY), 401),
        ("wrong x-api-key", post("/v1/chat/completions", chat(true, 10)).header("x-api-key", WRONG_KEY), 401),
        ("wrong basic", c.get(gw.url("/v1/models")).basic_auth("user", Some(WRONG_KEY)), 401),
        ("query key off a WebSocket", c.get(gw.url(&format!("/v1/models?api_key={WRONG_KEY}"))), 401),
        ("forbidden model", post("/v1/chat/completions", chat(false, 10)).bearer_auth(BOB_KEY), 403),
        ("upstream down", post("/down/v1/chat/completions", chat(false, 10)).bearer_auth(KEY), 502),
    ] {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.unwrap();
        let got = record(what, status, format!("{headers}\n{body}"));
        if want == 502 {
            assert!(got == 502 || got == 503, "{what}: {got} {body}");
        } else {
            assert_eq!(got, want, "{what}: {body}");
        }
    }

    // WebSocket: the key as a query parameter and as a subprotocol; a wrong one both ways.
    let ws = |q: &str| format!("ws://{}/v1/ws{q}", gw.addr);
    let with_query = websocket(&ws(&format!("?api_key={KEY}")), None).await;
    record("ws query", 101, with_query);
    let with_protocol = websocket(&ws(""), Some(&format!("openai-insecure-api-key.{KEY}"))).await;
    record("ws protocol", 101, with_protocol);
    let refused = websocket(&ws(&format!("?api_key={WRONG_KEY}")), None).await;
    assert!(refused.contains("401"), "{refused}");
    record("ws wrong query", 401, refused);
    let refused = websocket(&ws(""), Some(&format!("api_key.{WRONG_KEY}"))).await;
    record("ws wrong protocol", 401, refused);

    // A malformed request: Pingora's parse error quotes the raw header bytes.
    let raw = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRONG_KEY}\r\nbad header\r\n\r\n");
    let answer = raw_exchange(gw.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    record("malformed", 400, answer);

    // MCP through the official SDK.
    let mcp_out = mcp_client(&gw.url("/mcp")).await;
    record("mcp", 200, mcp_out);

    for (what, url) in [
        ("health", gw.url("/health")),
        ("admin health", gw.admin_url("/health")),
        ("metrics", gw.admin_url("/metrics")),
    ] {
        let resp = c.get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        record(what, status, text);
    }

    // Let the last lines (logging phase of the tunnels) reach the file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.proc.logs();
    let secrets = [KEY, BOB_KEY, WRONG_KEY, PROVIDER_KEY, MCP_PROVIDER_KEY];
    assert_clean("the gateway's log", &log, &secrets);
    // Trace was on, and the places that print credentials did print — redacted.
    assert!(log.contains(" TRACE "), "not a trace log");
    assert!(log.contains("Writing request header"), "Pingora's header dump is missing");
    assert!(log.contains("[redacted]"), "nothing was redacted");
    // Nor may any come back to a client: error bodies, headers, /health, /metrics.
    assert_clean("the answers", &answers, &secrets);
    assert_clean("the sim's log", &sim.logs(), &[KEY, WRONG_KEY]);
}

#[tokio::test]
async fn telegram_runner_at_trace_logs_no_token() {
    use crate::telegram::fake_bot::{FakeBot, TOKEN};
    use crate::telegram::fake_llm::{FakeLlm, KEY as GATEWAY_KEY};
    use crate::telegram::harness::{Runner, Setup, TempDir, ALICE};
    let (bot, llm, dir) = (FakeBot::start().await, FakeLlm::start().await, TempDir::new());
    let env = [("RUST_LOG", "trace")];
    let setup = Setup { bot: &bot, gateway_url: llm.url(), dir: &dir.0, telegram_yaml: "", args: &[], env: &env };
    // A Bot API error whose description quotes the request URL, token included: the runner
    // logs the description, and must not log the token with it.
    let quoted = format!("Bad Request: can't parse entities in https://api.telegram.org/bot{TOKEN}/sendMessage");
    bot.inject_error("sendMessage", Some(ALICE), 400, &quoted, None);
    let runner = Runner::spawn(&setup);
    bot.push_private(ALICE, "use `a<b` here");
    runner.wait_handled(1).await;
    bot.push_private(ALICE, "hello there");
    runner.wait_handled(2).await;
    let (_, status) = runner.status().await;
    let metrics = runner.metrics().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = runner.log();
    assert!(log.contains(" TRACE "), "not a trace log");
    assert_clean("the runner's log", &log, &[TOKEN, GATEWAY_KEY]);
    assert_clean("/status", &status.to_string(), &[TOKEN, GATEWAY_KEY]);
    assert_clean("/metrics", &metrics, &[TOKEN, GATEWAY_KEY]);
}
