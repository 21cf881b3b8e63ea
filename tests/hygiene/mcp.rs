//! MCP session ids bound to their key and age; `Origin` against HTTP/2's `:authority`.

use super::{client, KEY};
use crate::common::gateway::{spawn_gateway, spawn_gateway_admin_only_with_env};
use crate::common::spawn_sim;
use mcas::mcp::seal::{unix_now, Pinned, Sealer};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOB_KEY: &str = "client-key-hygiene-0002";
const SESSION_KEY_HEX: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

fn mcp_rest(sim: SocketAddr, ttl: &str) -> String {
    format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB_KEY}\", models: [\"*\"] }}\n\
         mcp: {{ session_key: \"{SESSION_KEY_HEX}\"{ttl} }}\nproviders:\n  - {{ name: sim, url: \"http://{sim}\" }}\n\
         routes:\n  - {{ path: \"/tools/*\", provider: sim, strip_prefix: \"/tools\", kind: mcp }}\n"
    )
}

fn pin(sim: SocketAddr, key: &str) -> Pinned {
    Pinned { provider: "sim".into(), backend: sim, token: "backend-sid-1".into(), key: key.into() }
}

/// A sealed session id works only for the key it was sealed for and only within
/// `mcp.session_ttl`; the legacy endpoint URL's sealed value likewise.
#[tokio::test]
async fn mcp_session_ids_are_bound_to_their_key_and_expire() {
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway("", &mcp_rest(sim.addr, ", session_ttl: 1h"), &[]).await;
    let sealer = Sealer::from_text(SESSION_KEY_HEX).unwrap();
    let send = |sealed: String, key: &'static str| {
        client()
            .post(gw.url("/tools/echo"))
            .bearer_auth(key)
            .header("mcp-session-id", sealed)
            .body("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}")
            .send()
    };
    let now = unix_now();
    let fresh = sealer.seal_at(&pin(sim.addr, "alice"), now - 60);
    let r = send(fresh.clone(), KEY).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["mcp-session-id"], "backend-sid-1");

    let r = send(fresh.clone(), BOB_KEY).await.unwrap();
    assert_eq!(r.status(), 404, "another key used alice's session");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "session_not_found");
    let stale = sealer.seal_at(&pin(sim.addr, "alice"), now - 3700);
    assert_eq!(send(stale, KEY).await.unwrap().status(), 404, "a session past mcp.session_ttl");

    // Legacy transport: the sealed value rides in the endpoint URL's query.
    let legacy = |sealed: &str, key: &'static str| {
        client().post(gw.url(&format!("/tools/messages/echo?session_id={sealed}"))).bearer_auth(key).body("{}").send()
    };
    let v: Value = legacy(&fresh, KEY).await.unwrap().json().await.unwrap();
    assert_eq!(v["path"], "/messages/echo?session_id=backend-sid-1", "{v}");
    assert_eq!(legacy(&fresh, BOB_KEY).await.unwrap().status(), 404);

    // The default TTL is 24 hours.
    let day = spawn_gateway("", &mcp_rest(sim.addr, ""), &[]).await;
    let send_day = |sealed: String| {
        client().post(day.url("/tools/echo")).bearer_auth(KEY).header("mcp-session-id", sealed).body("{}").send()
    };
    assert_eq!(send_day(sealer.seal_at(&pin(sim.addr, "alice"), now - 23 * 3600)).await.unwrap().status(), 200);
    assert_eq!(send_day(sealer.seal_at(&pin(sim.addr, "alice"), now - 25 * 3600)).await.unwrap().status(), 404);
}

/// A session minted through the gateway (the sim's echo mints none, so a fake backend does)
/// carries the key's name and the gateway's own issue time.
#[tokio::test]
async fn minted_session_ids_name_the_key() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nmcp-session-id: minted-1\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    let gw = spawn_gateway("", &mcp_rest(backend, ""), &[]).await;
    let r = client().post(gw.url("/tools/mcp")).bearer_auth(BOB_KEY).body("{}").send().await.unwrap();
    let sealed = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let opened = Sealer::from_text(SESSION_KEY_HEX).unwrap().open(&sealed).unwrap();
    assert_eq!((opened.key.as_str(), opened.token.as_str(), opened.backend), ("bob", "minted-1", backend));
}

/// HTTP/2 requests carry `:authority` and no `Host`: a browser's same-origin `Origin` passes,
/// another origin is refused.
#[tokio::test]
async fn http2_origin_is_compared_with_authority() {
    let cert = crate::common::tls::TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway_admin_only_with_env(&cert.listen_yaml(""), &mcp_rest(sim.addr, ""), &[]).await;
    let https = reqwest::Client::builder().add_root_certificate(cert.ca()).build().unwrap();
    let origin = format!("https://localhost:{}", gw.addr.port());
    let send = |origin: String| {
        https
            .post(format!("https://localhost:{}/tools/echo", gw.addr.port()))
            .bearer_auth(KEY)
            .header("origin", origin)
            .body("{}")
            .send()
    };
    let r = send(origin.clone()).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "a same-origin HTTP/2 request was refused: {v}");
    assert!(v["headers"].get("host").is_some());
    assert_eq!(send("https://evil.example".into()).await.unwrap().status(), 403);
    assert_eq!(send(format!("https://localhost:{}", gw.addr.port() + 1)).await.unwrap().status(), 403);
}
