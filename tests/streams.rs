//! Long-lived connections through the gateway: WebSocket tunnels to the sim's echo (text,
//! binary, ping, close codes, silent clients, 426), event streams (chunk timing, heartbeat
//! placement, idle timeout, a slow reader over a fast 50 MB stream), connection caps, and
//! draining on SIGTERM.

use crate::common::gateway::{key_yaml, spawn_gateway, Gw};
use crate::common::{spawn_sim, Proc};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "client-key-streams-0123";

/// A gateway with provider `sim` and the given extra route lines (YAML list items).
async fn gw(sim: &Proc, server_extra: &str, routes: &str) -> Gw {
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n{routes}",
        key_yaml("alice", KEY),
        sim.addr
    );
    spawn_gateway(server_extra, &rest, &[]).await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gw, path: &str, key: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}{path}", gw.addr).into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

/// The next data or pong frame, skipping the sim's pushes.
async fn next_non_push(ws: &mut Ws) -> Message {
    loop {
        let m =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("frame in time").unwrap().unwrap();
        match &m {
            Message::Text(t) if t.starts_with("push ") => continue,
            _ => return m,
        }
    }
}

#[tokio::test]
async fn websocket_echo_text_binary_ping_close() {
    let sim = spawn_sim(&[]).await;
    let gw = gw(&sim, "", "  - { path: \"/ws\", provider: sim, websocket: true }\n").await;
    let mut ws = connect(&gw, "/ws", Some(KEY)).await.expect("upgrade through the gateway");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::text("hello"));
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::binary(blob));
    ws.send(Message::Ping(b"are you there".to_vec())).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::Pong(b"are you there".to_vec()));
    let frame = CloseFrame { code: CloseCode::Library(4321), reason: "bye now".into() };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    match next_non_push(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4321);
            assert_eq!(&*f.reason, "bye now");
        }
        other => panic!("expected the close echo, got {other:?}"),
    }
    // After the tunnel, metrics show the tunnel gauge back at zero.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mcas_open_tunnels{key=\"alice\",route=\"/ws\"} 0"), "{metrics}");
}

#[tokio::test]
async fn websocket_needs_a_key_and_a_route_that_allows_it() {
    let sim = spawn_sim(&[]).await;
    let routes = "  - { path: \"/ws\", provider: sim, websocket: true }\n  - { path: \"/nows/*\", provider: sim, strip_prefix: \"/nows\" }\n";
    let gw = gw(&sim, "", routes).await;
    match connect(&gw, "/ws", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a tunnel")),
    }
    match connect(&gw, "/ws", Some("wrong-key")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a tunnel")),
    }
    // A raw upgrade on a route without websocket: 426, Upgrade header, OpenAI body.
    let resp = reqwest::Client::new()
        .get(gw.url("/nows/ws"))
        .bearer_auth(KEY)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "websocket_not_allowed");
    // The same route still serves plain HTTP.
    let resp = reqwest::Client::new().get(gw.url("/nows/v1/models")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// The client listens silently while the backend pushes: the tunnel lives on well past the
/// route's idle timeout (1 s) and the server's client read timeout (1 s), because traffic in
/// either direction counts; when both sides fall silent the idle timeout ends it.
#[tokio::test]
async fn tunnel_idle_timeout_counts_traffic_both_ways() {
    let sim = spawn_sim(&[]).await;
    let routes = "  - { path: \"/ws\", provider: sim, websocket: true, idle_timeout: 1s }\n";
    let gw = gw(&sim, "client_read_timeout: 1s", routes).await;
    let mut ws = connect(&gw, "/ws?push_ms=200", Some(KEY)).await.unwrap();
    let t0 = Instant::now();
    let mut pushes = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with("push ") => pushes += 1,
            other => panic!("tunnel broke while the client was silent: {other:?}"),
        }
    }
    assert!(pushes >= 10, "{pushes} pushes in 3 s");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::text("still here"));

    // Nobody speaks: the tunnel ends after about the idle timeout.
    let mut ws = connect(&gw, "/ws", Some(KEY)).await.unwrap();
    let t0 = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("idle tunnel was not closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
}

/// The acceptance case as written: 90 s of client silence with Pingora's default downstream
/// read timeout (60 s) in place and the route's default idle timeout.
#[tokio::test]
async fn silent_websocket_client_survives_90_seconds() {
    let sim = spawn_sim(&[]).await;
    let gw = gw(&sim, "", "  - { path: \"/ws\", provider: sim, websocket: true }\n").await;
    let mut ws = connect(&gw, "/ws?push_ms=1000", Some(KEY)).await.unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(90) {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with("push ") => {}
            other => panic!("tunnel broke after {:?} of client silence: {other:?}", t0.elapsed()),
        }
    }
    ws.send(Message::text("after 90 s")).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::text("after 90 s"));
}
