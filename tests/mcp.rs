//! MCP through the gateway with two replicas of the official Python SDK server
//! (tests/mcp/server.py), driven by the SDK's own client (tests/mcp/client.py): streamable
//! HTTP with sessions, the stateless 2026-07-28 mode, and legacy HTTP+SSE; forged, foreign
//! and stale session ids get 404; a session minted through one gateway instance works
//! through another.
//!
//! Needs Python with `mcp` installed: `.ci/run` makes `.venv`; or set `MCAS_TEST_PYTHON`.

use crate::common::gateway::{key_yaml, spawn_gateway, Gw};
use crate::common::{free_port, python, spawn, Proc};
use mcas::mcp::seal::{Pinned, Sealer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "client-key-mcp-0123456";
const SESSION_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp").join(name).display().to_string()
}

/// One replica of the SDK's server, on a free port, ready.
async fn mcp_server(transport: &str, replica: &str) -> Proc {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let args = vec![script("server.py"), transport.to_string(), port.to_string(), replica.to_string()];
    let mut proc = spawn(python().to_str().unwrap(), &args, &[], addr);
    proc.wait_ready("/ready-probe").await.unwrap_or_else(|e| panic!("MCP server did not start: {e}"));
    proc
}

/// Runs the SDK client; returns its JSON summary.
async fn run_client(mode: &str, url: &str, calls: usize, origin: Option<&str>) -> Value {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script("client.py")).args([mode, url, KEY, &calls.to_string()]);
    if let Some(o) = origin {
        cmd.arg(o);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("client finished").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("client printed no JSON: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn providers(name: &str, a: &Proc, b: &Proc) -> String {
    format!(
        "  - {{ name: {name}, url: \"http://{}\", backends: [\"{}\", \"{}\"], balance: round_robin }}\n",
        a.addr, a.addr, b.addr
    )
}

async fn gateway(providers_yaml: &str, routes: &str) -> Gw {
    let rest = format!(
        "{}mcp: {{ session_key: \"${{MCAS_MCP_SESSION_KEY}}\" }}\nproviders:\n{providers_yaml}routes:\n{routes}",
        key_yaml("alice", KEY)
    );
    spawn_gateway("", &rest, &[("MCAS_MCP_SESSION_KEY", SESSION_KEY_HEX)]).await
}

fn assert_pinned(summary: &Value, calls: usize) {
    assert_eq!(summary["ok"], true, "{}", summary["error"].as_str().unwrap_or(""));
    assert_eq!(summary["results"].as_array().unwrap().len(), calls, "{summary}");
    assert_eq!(summary["replicas"].as_array().unwrap().len(), 1, "calls spread over replicas: {summary}");
}

#[tokio::test]
async fn streamable_http_sessions_stay_on_their_replica() {
    let (a, b) = (mcp_server("streamable-http", "rA").await, mcp_server("streamable-http", "rB").await);
    let routes = "  - { path: \"/mcp\", provider: tools, kind: mcp, heartbeat: 5s }\n  - { path: \"/unpinned/*\", provider: tools, strip_prefix: \"/unpinned\" }\n";
    let gw = gateway(&providers("tools", &a, &b), routes).await;
    let origin = format!("http://{}", gw.addr);
    let mut replicas = std::collections::HashSet::new();
    // Several sessions in a row: round robin puts their `initialize` on both replicas.
    for _ in 0..3 {
        let s = run_client("streamable", &gw.url("/mcp"), 20, Some(&origin)).await;
        assert_pinned(&s, 20);
        replicas.insert(s["replicas"][0].as_str().unwrap().to_string());
    }
    assert_eq!(replicas.len(), 2, "initialize was not balanced: {replicas:?}");
    // Control: the same replicas without session pinning break the session.
    let s = run_client("streamable", &gw.url("/unpinned/mcp"), 20, None).await;
    assert_eq!(s["ok"], false, "an unpinned session survived round robin: {s}");
}

#[tokio::test]
async fn stateless_mode_through_the_gateway() {
    let (a, b) = (mcp_server("streamable-http", "rA").await, mcp_server("streamable-http", "rB").await);
    let gw = gateway(&providers("tools", &a, &b), "  - { path: \"/mcp\", provider: tools, kind: mcp }\n").await;
    let s = run_client("stateless", &gw.url("/mcp"), 20, None).await;
    assert_eq!(s["ok"], true, "{}", s["error"].as_str().unwrap_or(""));
    assert_eq!(s["results"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn legacy_sse_posts_reach_the_stream_owner() {
    let (a, b) = (mcp_server("sse", "sA").await, mcp_server("sse", "sB").await);
    let routes = "  - { path: \"/legacy/*\", provider: old, strip_prefix: \"/legacy\", kind: mcp, heartbeat: 5s }\n";
    let gw = gateway(&providers("old", &a, &b), routes).await;
    let mut replicas = std::collections::HashSet::new();
    for _ in 0..3 {
        let s = run_client("sse", &gw.url("/legacy/sse"), 20, None).await;
        assert_pinned(&s, 20);
        replicas.insert(s["replicas"][0].as_str().unwrap().to_string());
    }
    assert_eq!(replicas.len(), 2, "SSE streams were not balanced: {replicas:?}");
}

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

async fn post(gw: &Gw, session: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.url("/mcp"))
        .bearer_auth(KEY)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn forged_stale_and_foreign_session_ids_get_404_and_sessions_cross_instances() {
    let (a, b) = (mcp_server("streamable-http", "rA").await, mcp_server("streamable-http", "rB").await);
    let prov = providers("tools", &a, &b);
    let routes = "  - { path: \"/mcp\", provider: tools, kind: mcp }\n";
    let gw1 = gateway(&prov, routes).await;
    let gw2 = gateway(&prov, routes).await;

    let resp = post(&gw1, None, &init_body()).await;
    assert_eq!(resp.status(), 200);
    let sealed = resp.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let _ = resp.text().await;
    let sealer = Sealer::from_text(SESSION_KEY_HEX).unwrap();
    let pin = sealer.open(&sealed).expect("the client sees a sealed id");
    assert_eq!(pin.provider, "tools");
    assert!(pin.backend == a.addr || pin.backend == b.addr);
    assert!(!sealed.contains(&pin.token), "the backend's id leaks");

    // The session continues through another gateway instance (no shared state).
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(&gw2, Some(&sealed), &note).await.status(), 202);
    for i in 0..4 {
        let call = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {"n": i}}});
        let resp = post(&gw2, Some(&sealed), &call).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains(&format!(":{i}")), "{text}");
    }

    // Forged, sealed with another key, naming a backend the provider does not have, or the
    // backend's own raw id: 404, so the client re-initializes.
    let other_key = Sealer::new([9; 32]).seal(&pin);
    let gone = sealer.seal(&Pinned { backend: "127.0.0.1:1".parse().unwrap(), ..pin.clone() });
    let wrong_provider = sealer.seal(&Pinned { provider: "elsewhere".into(), ..pin.clone() });
    for bad in ["forged-session-id", other_key.as_str(), gone.as_str(), wrong_provider.as_str(), pin.token.as_str()] {
        let call = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"});
        let resp = post(&gw1, Some(bad), &call).await;
        assert_eq!(resp.status(), 404, "session id {bad:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "session_not_found");
    }

    // DELETE ends the session on its backend; the id is then stale there: 404 from the backend.
    let resp = reqwest::Client::new()
        .delete(gw1.url("/mcp"))
        .bearer_auth(KEY)
        .header("mcp-session-id", &sealed)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = post(&gw1, Some(&sealed), &json!({"jsonrpc": "2.0", "id": 100, "method": "tools/list"})).await;
    assert_eq!(resp.status(), 404);

    // A cross-origin browser request is refused before it reaches a backend.
    let resp = reqwest::Client::new()
        .post(gw1.url("/mcp"))
        .bearer_auth(KEY)
        .header("origin", "http://evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

/// What a pinned MCP request looks like upstream (the sim's echo reports it): the backend's
/// own session id, MCP and resumption headers untouched, Host and Origin of the backend, the
/// legacy `session_id` unsealed in the query.
#[tokio::test]
async fn pinned_requests_carry_the_backend_id_and_mcp_headers() {
    let sim = crate::common::spawn_sim(&[]).await;
    let prov = format!("  - {{ name: sim, url: \"http://{}\" }}\n", sim.addr);
    let gw = gateway(&prov, "  - { path: \"/tools/*\", provider: sim, strip_prefix: \"/tools\", kind: mcp }\n").await;
    let sealer = Sealer::from_text(SESSION_KEY_HEX).unwrap();
    let sealed = sealer.seal(&Pinned {
        provider: "sim".into(),
        backend: sim.addr,
        token: "backend-sid-1".into(),
        key: "alice".into(),
    });
    let v: Value = reqwest::Client::new()
        .post(gw.url("/tools/echo"))
        .bearer_auth(KEY)
        .header("mcp-session-id", &sealed)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", "evt-41")
        .header("mcp-custom-thing", "kept")
        .header("origin", format!("http://{}", gw.addr))
        .body("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = &v["headers"];
    assert_eq!(h["mcp-session-id"], "backend-sid-1", "{v}");
    assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    assert_eq!(h["last-event-id"], "evt-41");
    assert_eq!(h["mcp-custom-thing"], "kept");
    assert_eq!(h["host"], sim.addr.to_string());
    assert_eq!(h["origin"], format!("http://{}", sim.addr));
    assert!(h.get("authorization").is_none(), "the client's key went upstream: {v}");
    assert!(v["body_len"].as_u64().unwrap() > 0, "a JSON-RPC batch passes unparsed");

    let legacy =
        sealer.seal(&Pinned { provider: "sim".into(), backend: sim.addr, token: "abc123".into(), key: "alice".into() });
    let v: Value = reqwest::Client::new()
        .post(gw.url(&format!("/tools/messages/echo?session_id={legacy}")))
        .bearer_auth(KEY)
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/messages/echo?session_id=abc123", "{v}");
}

/// New sessions are placed by load, not by hash key: with `ketama` (whose default key for an
/// MCP body is the API key) eight concurrent sessions of one key still split over both
/// replicas, and each stays on its own. Open sessions show in `/health` and `/metrics`.
#[tokio::test]
async fn new_sessions_of_one_key_are_placed_by_load() {
    let (a, b) = (mcp_server("streamable-http", "rA").await, mcp_server("streamable-http", "rB").await);
    let provider = format!(
        "  - {{ name: tools, url: \"http://{}\", backends: [\"{}\", \"{}\"], balance: ketama }}\n",
        a.addr, a.addr, b.addr
    );
    let gw = gateway(&provider, "  - { path: \"/mcp\", provider: tools, kind: mcp }\n").await;
    let url = gw.url("/mcp");
    let runs = (0..8).map(|_| run_client("streamable", &url, 10, None));
    let summaries = futures_util::future::join_all(runs).await;
    let mut on_a = 0;
    for s in &summaries {
        assert_pinned(s, 10);
        if s["replicas"][0] == "rA" {
            on_a += 1;
        }
    }
    eprintln!("8 sessions of one key: {on_a} on rA, {} on rB", 8 - on_a);
    assert!((3..=5).contains(&on_a), "sessions split {on_a}/{}", 8 - on_a);

    // An open session is counted on its backend until its DELETE.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .bearer_auth(KEY)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let sessions = |h: &Value| -> u64 {
        h["providers"][0]["backends"].as_array().unwrap().iter().map(|b| b["sessions"].as_u64().unwrap()).sum()
    };
    let health: Value = reqwest::get(gw.admin_url("/health")).await.unwrap().json().await.unwrap();
    assert_eq!(sessions(&health), 1, "{health}");
    let m = gw.metrics_with("mcas_backend_sessions{").await;
    assert!(m.lines().any(|l| l.starts_with("mcas_backend_sessions{") && l.ends_with(" 1")), "{m}");
    let r = client.delete(&url).bearer_auth(KEY).header("mcp-session-id", &id).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let health: Value = reqwest::get(gw.admin_url("/health")).await.unwrap().json().await.unwrap();
    assert_eq!(sessions(&health), 0, "{health}");
}
