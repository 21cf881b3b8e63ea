//! Long-lived connections through the gateway: WebSocket tunnels to the sim's echo (text,
//! binary, ping, close codes, silent clients, 426), event streams (chunk timing, heartbeat
//! placement, idle timeout, a slow reader over a fast 50 MB stream), connection caps, and
//! draining on SIGTERM.

use crate::common::gateway::{key_yaml, raw_upgrade, spawn_gateway, Gw};
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
    let resp = raw_upgrade(&gw.url("/nows/ws"), KEY).send().await.unwrap();
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

/// A scripted SSE upstream: answers one request per connection with `steps` — bytes to send,
/// or a pause — then closes (a close-delimited body).
enum Step {
    Send(&'static str),
    Pause(u64),
}

async fn scripted_sse(steps: Vec<Step>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let steps = std::sync::Arc::new(steps);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let steps = steps.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for s in steps.iter() {
                    match s {
                        Step::Send(t) => {
                            if sock.write_all(t.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, task)
}

async fn gw_for_addr(addr: std::net::SocketAddr, server_extra: &str, routes: &str) -> Gw {
    let rest = format!(
        "{}providers:\n  - {{ name: up, url: \"http://{addr}\", models: [\"*\"] }}\nroutes:\n{routes}",
        key_yaml("alice", KEY)
    );
    spawn_gateway(server_extra, &rest, &[]).await
}

/// Reads the whole body, noting when each chunk arrived.
async fn timed_body(resp: reqwest::Response) -> (String, Vec<(Duration, String)>) {
    let t0 = Instant::now();
    let mut stream = resp.bytes_stream();
    let (mut all, mut chunks) = (String::new(), Vec::new());
    // An error (a cut stream) ends the body like its end does; callers check what arrived.
    while let Some(Ok(c)) = stream.next().await {
        let s = String::from_utf8_lossy(&c).to_string();
        all.push_str(&s);
        chunks.push((t0.elapsed(), s));
    }
    (all, chunks)
}

#[tokio::test]
async fn heartbeats_only_at_event_boundaries() {
    let (addr, _up) = scripted_sse(vec![
        Step::Send("data: first\n\n"),
        Step::Pause(700),
        Step::Send("data: hal"),
        Step::Pause(700),
        Step::Send("f\r\n\r\n"),
        Step::Pause(700),
        Step::Send("event: x\r\ndata: last\r\n\r\n"),
    ])
    .await;
    let routes = "  - { path: \"/events\", provider: up, heartbeat: 200ms }\n";
    let gw = gw_for_addr(addr, "", routes).await;
    let resp = reqwest::Client::new()
        .get(gw.url("/events"))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let (all, _) = timed_body(resp).await;
    let ka = ": keepalive\n\n";
    let without: String = all.replace(ka, "");
    assert_eq!(without, "data: first\n\ndata: half\r\n\r\nevent: x\r\ndata: last\r\n\r\n", "{all:?}");
    // Keepalives in both event-boundary pauses, none inside the split event.
    let after_first = &all[all.find("data: first\n\n").unwrap()..all.find("data: hal").unwrap()];
    assert!(after_first.matches(ka).count() >= 2, "{all:?}");
    assert!(!all.contains("data: hal: keepalive") && all.contains("data: half\r\n\r\n"), "{all:?}");
    let after_half = &all[all.find("data: half").unwrap()..all.find("event: x").unwrap()];
    assert!(after_half.matches(ka).count() >= 2, "{all:?}");
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mcas_sse_heartbeats_total"), "{metrics}");
}

#[tokio::test]
async fn streamed_tokens_pass_unbuffered_with_and_without_heartbeat() {
    let sim = spawn_sim(&["--itl-ms", "100", "--tokens", "8"]).await;
    let routes = "  - { path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 30s }\n";
    let gw = gw(&sim, "", routes).await;
    for path in ["/v1/chat/completions", "/hb/v1/chat/completions"] {
        let body =
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
        let resp = reqwest::Client::new().post(gw.url(path)).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let (all, chunks) = timed_body(resp).await;
        assert!(all.trim_end().ends_with("data: [DONE]"), "{path}: {all}");
        let times: Vec<Duration> = chunks.iter().filter(|(_, c)| c.contains("\"content\"")).map(|(t, _)| *t).collect();
        assert!(times.len() >= 6, "{path}: tokens arrived in {} chunks", times.len());
        let spread = *times.last().unwrap() - times[0];
        assert!(spread >= Duration::from_millis(500), "{path}: tokens arrived together ({spread:?}): buffered");
    }
}

/// A backend whose SSE lines end with a bare CR: each event reaches the client when the
/// backend sends it (before, the usage-event removal held every event until the next chunk,
/// waiting for an LF that never comes), the usage event the gateway asked for is removed, and
/// the tokens are counted — with and without heartbeat.
#[tokio::test]
async fn a_bare_cr_stream_passes_event_by_event_and_is_counted() {
    let sim = spawn_sim(&["--itl-ms", "800", "--tokens", "3", "--line-ending", "cr"]).await;
    let routes = "  - { path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 30s }\n";
    let gw = gw(&sim, "", routes).await;
    for path in ["/v1/chat/completions", "/hb/v1/chat/completions"] {
        let body =
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
        let resp = reqwest::Client::new().post(gw.url(path)).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let (all, chunks) = timed_body(resp).await;
        assert!(all.ends_with("}\r\rdata: [DONE]\r\r") && !all.contains('\n'), "{path}: {all:?}");
        assert!(!all.contains("\"usage\""), "{path}: the added usage event is removed: {all:?}");
        let at = |tok: &str| chunks.iter().find(|(_, c)| c.contains(tok)).map(|(t, _)| *t).unwrap();
        // Sent at once (no time to first token), the next one 800 ms later.
        let first = at("\"tok1");
        assert!(first < Duration::from_millis(400), "{path}: tok1 was held until tok2 came ({first:?})");
    }
    let want = "mcas_tokens_total{key=\"alice\",kind=\"completion\",model=\"sim-model\"} 6";
    let m = gw.metrics_with(want).await;
    assert!(m.contains(want), "{m}");
}

#[tokio::test]
async fn silent_stream_ends_at_idle_timeout() {
    let sim = spawn_sim(&["--itl-ms", "3000", "--tokens", "3"]).await;
    let routes = "  - { path: \"/short/v1/*\", provider: sim, strip_prefix: \"/short\", idle_timeout: 1s }\n";
    let gw = gw(&sim, "", routes).await;
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(gw.url("/short/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (all, _) = timed_body(resp).await;
    assert!(!all.contains("[DONE]"), "{all}");
    assert!(t0.elapsed() < Duration::from_millis(2900), "{:?}", t0.elapsed());
}

/// A client that reads slowly from a fast 50 MB stream: the gateway must not buffer it (its
/// resident memory stays flat while the upstream could produce far more), then the client
/// catches up and gets every byte.
#[tokio::test]
async fn slow_reader_keeps_gateway_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = spawn_sim(&[]).await;
    let routes = "  - { path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 30s }\n";
    let gw = gw(&sim, "", routes).await;
    for path in ["/v1/chat/completions", "/hb/v1/chat/completions"] {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"sim-model","stream":true}"#;
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\nx-sim-tokens: 240000\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        let mut s = sock.connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let before = gw.proc.rss_kib();
        let mut buf = vec![0u8; 256 * 1024];
        let (mut total, mut peak) = (0usize, before);
        // 5 s at 16 KiB per 20 ms (~800 KB/s): the sim could send 50 MB in ~2 s.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let n = s.read(&mut buf[..16 * 1024]).await.unwrap();
            assert!(n > 0, "stream ended early");
            total += n;
            peak = peak.max(gw.proc.rss_kib());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slow_total = total;
        let mut tail = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
        let tail = String::from_utf8_lossy(&tail);
        assert!(tail.contains("data: [DONE]"), "{path}: stream incomplete");
        assert!(total > 50_000_000, "{path}: only {total} bytes");
        let growth = peak.saturating_sub(before);
        eprintln!(
            "slow reader {path}: {slow_total} bytes read slowly, {total} total; gateway RSS {before} KiB -> peak {peak} KiB (+{growth} KiB)"
        );
        assert!(growth < 16 * 1024, "{path}: gateway grew by {growth} KiB while the client read slowly");
    }
}

fn three_keys() -> String {
    "keys:\n  - { name: alice, key: \"alice-key-0123456789\", models: [\"*\"] }\n  - { name: bob, key: \"bob-key-0123456789\", models: [\"*\"] }\n  - { name: carol, key: \"carol-key-0123456789\", models: [\"*\"] }\n".to_string()
}

async fn refused_status(gw: &Gw, path: &str, key: &str) -> (u16, String) {
    match connect(gw, path, Some(key)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Ok(_) => (101, String::new()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn connection_caps_per_key_and_per_route() {
    let sim = spawn_sim(&["--itl-ms", "100", "--tokens", "40"]).await;
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model, max_streams_per_key: 1, max_streams: 2 }}\n  - {{ path: \"/ws\", provider: sim, websocket: true, max_tunnels_per_key: 1, max_tunnels: 2 }}\n",
        three_keys(),
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let alice = "alice-key-0123456789";
    let bob = "bob-key-0123456789";
    let carol = "carol-key-0123456789";

    // Tunnels: one per key, two in all.
    let _t1 = connect(&gw, "/ws", Some(alice)).await.unwrap();
    let (status, body) = refused_status(&gw, "/ws", alice).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    let _t2 = connect(&gw, "/ws", Some(bob)).await.unwrap();
    let (status, body) = refused_status(&gw, "/ws", carol).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection_limit"), "{body}");
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mcas_open_tunnels{key=\"alice\",route=\"/ws\"} 1"), "{metrics}");
    drop(_t1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _t3 = connect(&gw, "/ws", Some(carol)).await.expect("a closed tunnel gives its place back");

    // Event streams: the same rules, on `stream: true` requests.
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let start = |key: &'static str| {
        let (url, body) = (gw.url("/v1/chat/completions"), body.clone());
        async move { reqwest::Client::new().post(url).bearer_auth(key).json(&body).send().await.unwrap() }
    };
    let s1 = start(alice).await;
    assert_eq!(s1.status(), 200);
    let refused = start(alice).await;
    assert_eq!(refused.status(), 429);
    let v: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let s2 = start(bob).await;
    assert_eq!(s2.status(), 200);
    assert_eq!(start(carol).await.status(), 503);
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mcas_open_streams{key=\"bob\",route=\"/v1/*\"} 1"), "{metrics}");
    // A non-streamed request is not capped.
    let plain = serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model"});
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(alice)
        .header("x-sim-itl-ms", "0")
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = (s1.bytes().await, s2.bytes().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(start(carol).await.status(), 200, "finished streams give their places back");
}

/// SIGTERM: the listener closes at once, a stream in flight finishes within the grace period
/// (1 s in the test harness), a longer one is cut after it, a tunnel too, and the process exits.
/// Pingora cuts tunnels at the end of the grace period with a TCP close, not a WebSocket
/// close frame (1001): the gateway has no hook that can write into an idle tunnel.
#[tokio::test]
async fn sigterm_drains_streams_then_exits() {
    let sim = spawn_sim(&[]).await;
    let mut gw = gw(&sim, "", "  - { path: \"/ws\", provider: sim, websocket: true }\n").await;
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let client = reqwest::Client::new();
    let short = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-itl-ms", "100")
        .header("x-sim-tokens", "6")
        .json(&body)
        .send()
        .await
        .unwrap();
    let long = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-itl-ms", "100")
        .header("x-sim-tokens", "100")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut ws = connect(&gw, "/ws?push_ms=100", Some(KEY)).await.unwrap();
    let t0 = Instant::now();
    gw.proc.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections.
    let refused =
        reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap().get(gw.url("/health")).send().await;
    assert!(refused.is_err(), "a new request was served after SIGTERM: {refused:?}");
    let (short_all, _) = timed_body(short).await;
    assert!(short_all.trim_end().ends_with("data: [DONE]"), "the short stream did not finish: {short_all}");
    let ws_task = tokio::spawn(async move {
        // The pushes flow until the gateway says goodbye.
        let mut pushes_after_term = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => pushes_after_term += 1,
                other => return (Instant::now(), pushes_after_term, other),
            }
        }
    });
    let (long_all, _) = timed_body(long).await;
    assert!(!long_all.contains("[DONE]"), "the 10 s stream outlived the 1 s grace period");
    let cut_at = t0.elapsed();
    assert!(cut_at < Duration::from_secs(5), "stream cut after {cut_at:?}");
    let (ws_end, pushes, how) =
        tokio::time::timeout(Duration::from_secs(10), ws_task).await.expect("tunnel ended").unwrap();
    eprintln!("drain: long stream cut after {cut_at:?}; tunnel closed after {:?} with {how:?}", ws_end - t0);
    // The tunnel ran through the grace period, then the gateway closed it with 1001.
    assert!(pushes >= 3, "only {pushes} pushes during the grace period");
    match how {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away, "{f:?}"),
        other => panic!("expected a close frame with 1001 (Going Away), got {other:?}"),
    }
    // The backend was told the same.
    let sim_metrics = reqwest::get(format!("http://{}/metrics", sim.addr)).await.unwrap().text().await.unwrap();
    assert!(sim_metrics.contains("mcas_sim_ws_closes_total{code=\"1001\"} 1"), "{sim_metrics}");
    let status = gw.proc.wait_exit(Duration::from_secs(10)).expect("gateway exited");
    eprintln!("drain: gateway exited {status} after {:?}", t0.elapsed());
}

/// SIGTERM with nothing left to serve ends the process once its client connections are gone,
/// not after the whole grace period (30 s here; Pingora's period is a plain sleep): a stream in
/// flight still finishes, an idle keep-alive connection is let go after Pingora's 2 s, and the
/// process exits 0 with the access log of both requests written (src/drain.rs).
#[tokio::test]
async fn sigterm_exits_once_drained_not_after_the_grace_period() {
    use crate::common::{free_port, spawn};
    let sim = spawn_sim(&[]).await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 1, grace_period: 30s, shutdown_timeout: 1s, \
         pid_file: \"{d}/g.pid\", upgrade_sock: \"{d}/g.sock\" }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         log: {{ access_log: true }}\n{}providers:\n  - {{ name: sim, url: \"http://{}/v1\" }}\n",
        key_yaml("alice", KEY),
        sim.addr
    );
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut proc = spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &args, &[], addr);
    proc.wait_url(&format!("http://{addr}/health")).await.unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let client = reqwest::Client::new();
    let chat = |stream: bool| serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": stream});
    // A finished request leaves its connection idle in the client's pool.
    let first = client.post(&url).bearer_auth(KEY).json(&chat(false)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let stream = reqwest::Client::new()
        .post(&url)
        .bearer_auth(KEY)
        .header("x-sim-itl-ms", "100")
        .header("x-sim-tokens", "20")
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let t0 = Instant::now();
    proc.terminate();
    let (all, _) = timed_body(stream).await;
    assert!(all.trim_end().ends_with("data: [DONE]"), "the stream in flight did not finish: {all}");
    let status = proc.wait_exit(Duration::from_secs(15)).expect("the gateway still runs 15 s after SIGTERM");
    let took = t0.elapsed();
    eprintln!("drain: exited {status} {took:?} after SIGTERM (grace period 30 s)");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let logs = proc.logs();
    assert!(logs.contains("drained: no client connection open"), "{logs}");
    let lines =
        logs.lines().filter(|l| l.contains("\"path\":\"/v1/chat/completions\"") && l.contains("\"status\":200"));
    assert_eq!(lines.count(), 2, "both requests' access log lines: {logs}");
}

#[test]
fn stream_options_are_validated_with_their_yaml_path() {
    use crate::common::gateway::check;
    let base = "keys:\n  - { name: a, key: \"k-0123456789\", models: [\"*\"] }\nproviders:\n  - { name: p, url: \"http://127.0.0.1:9\" }\n";
    let cases = [
        ("routes:\n  - { path: \"/mcp\", provider: p, kind: mcp }\n", "mcp.session_key"),
        (
            "mcp: { session_key: \"abcd\" }\nroutes:\n  - { path: \"/mcp\", provider: p, kind: mcp }\n",
            "mcp.session_key: must be 32 bytes",
        ),
        ("routes:\n  - { path: \"/x\", provider: p, kind: grpc }\n", "routes[0].kind"),
        ("routes:\n  - { path: \"/x\", provider: p, heartbeat: 10s, idle_timeout: 5s }\n", "routes[0].heartbeat"),
        ("routes:\n  - { path: \"/x\", provider: p, idle_timeout: 0s }\n", "routes[0].idle_timeout"),
        (
            "routes:\n  - { path: \"/x\", provider: p, max_tunnels: 3 }\n",
            "routes[0].max_tunnels: is set but websocket is false",
        ),
        ("routes:\n  - { path: \"/x\", provider: p, max_streams: 0 }\n", "routes[0].max_streams"),
        ("routes:\n  - { path: \"/x\", provider: p, websocket: maybe }\n", "routes[0].websocket"),
    ];
    for (extra, expect) in cases {
        let (code, out) = check(&format!("{base}{extra}"), &[]);
        assert_eq!(code, 1, "{extra}: {out}");
        assert!(out.contains(expect), "{extra}: expected {expect:?} in {out}");
    }
    let ok = format!(
        "{base}mcp: {{ session_key: \"${{K}}\" }}\nroutes:\n  - {{ path: \"/mcp\", provider: p, kind: mcp, heartbeat: 15s, idle_timeout: 10m }}\n  - {{ path: \"/ws\", provider: p, websocket: true, max_tunnels: 10, max_tunnels_per_key: 2 }}\n"
    );
    let (code, out) = check(&ok, &[("K", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")]);
    assert_eq!(code, 0, "{out}");
}

/// Graceful upgrade: a second process started with `--upgrade` takes the listening sockets
/// when the first gets SIGQUIT; requests during the hand-over all succeed (none refused) and a
/// stream on the old process finishes there.
#[tokio::test]
async fn graceful_upgrade_refuses_nothing_and_keeps_streams() {
    use crate::common::{free_port, spawn, wait_ready};
    let sim = spawn_sim(&[]).await;
    let (port, admin) = (free_port(), free_port());
    let sock = format!("/tmp/mcas-test-upgrade-{port}.sock");
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 1, grace_period: 5s, shutdown_timeout: 1s, pid_file: \"/tmp/mcas-test-upgrade-{port}.pid\", upgrade_sock: \"{sock}\" }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n  - {{ path: \"/ws\", provider: sim, websocket: true }}\n",
        key_yaml("alice", KEY),
        sim.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bin = env!("CARGO_BIN_EXE_mcas-gateway");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut old = spawn(bin, &args, &[], addr);
    wait_ready(&format!("http://{addr}/health")).await;

    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let stream = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-itl-ms", "100")
        .header("x-sim-tokens", "25")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let ws_url = format!("ws://{addr}/ws");
    let ws_req = || {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        req
    };
    let (mut old_ws, _) = tokio_tungstenite::connect_async(ws_req()).await.unwrap();

    let mut up_args = args.clone();
    up_args.push("--upgrade".into());
    let _new = spawn(bin, &up_args, &[], addr);
    let t0 = Instant::now();
    while !std::path::Path::new(&sock).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the new process never opened {sock}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests on fresh connections, before, during and after the hand-over.
    let hammer = tokio::spawn(async move {
        let client =
            reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
        let (mut ok, mut failed) = (0, Vec::new());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            match client.get(format!("http://{addr}/health")).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill").args(["-QUIT", &old.pid().to_string()]).status();
    let (all, _) = timed_body(stream).await;
    assert!(all.trim_end().ends_with("data: [DONE]"), "the stream on the old process was cut: {all}");
    // The old process's tunnel is told goodbye (1001) near the end of its grace period; the
    // client reconnects and lands on the new process.
    let end = tokio::time::timeout(Duration::from_secs(10), next_non_push(&mut old_ws)).await.expect("tunnel closed");
    match end {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away, "{f:?}"),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let (mut new_ws, _) = tokio_tungstenite::connect_async(ws_req()).await.expect("reconnected after the upgrade");
    new_ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next_non_push(&mut new_ws).await, Message::text("again"));
    let (ok, failed) = hammer.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    assert!(ok > 50, "{ok}");
    assert!(old.wait_exit(Duration::from_secs(10)).is_some(), "the old process did not exit");
    // The new process serves on its own.
    let resp = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = std::fs::remove_file(&sock);
}

/// A client that leaves a silent stream on the heartbeat relay is noticed at once, not at the
/// next heartbeat: the stream, its slot and its upstream connection are released.
#[tokio::test]
async fn relay_notices_a_departed_client_at_once() {
    let sim = spawn_sim(&[]).await;
    let routes = "  - { path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 60s, max_streams: 5 }\n";
    let gw = gw(&sim, "", routes).await;
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let resp = reqwest::Client::new()
        .post(gw.url("/hb/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-tokens", "2")
        .header("x-sim-itl-ms", "3600000")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let gauge = "mcas_open_streams{key=\"alice\",route=\"/hb/v1/*\"}";
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("{gauge} 1")), "{metrics}");
    drop(stream);
    let t0 = Instant::now();
    loop {
        let metrics = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
        if metrics.contains(&format!("{gauge} 0")) && metrics.contains("mcas_inflight_requests 0") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the departed client's stream is still held: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gateway_wide_caps_count_every_route() {
    let sim = spawn_sim(&["--itl-ms", "100", "--tokens", "40"]).await;
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n  - {{ path: \"/ws\", provider: sim, websocket: true }}\n  - {{ path: \"/chat/ws\", provider: sim, websocket: true, strip_prefix: \"/chat\" }}\n",
        three_keys(),
        sim.addr
    );
    let gw = spawn_gateway("max_streams: 1, max_tunnels: 1", &rest, &[]).await;
    let (alice, bob) = ("alice-key-0123456789", "bob-key-0123456789");
    let _t1 = connect(&gw, "/ws", Some(alice)).await.unwrap();
    // Another route and another key: still over the gateway's one tunnel.
    let (status, body) = refused_status(&gw, "/chat/ws", bob).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection_limit") && body.contains("in all"), "{body}");
    drop(_t1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _t2 = connect(&gw, "/chat/ws", Some(bob)).await.expect("the closed tunnel gave its place back");

    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "model": "sim-model", "stream": true});
    let c = reqwest::Client::new();
    let s1 = c.post(gw.url("/v1/chat/completions")).bearer_auth(alice).json(&body).send().await.unwrap();
    assert_eq!(s1.status(), 200);
    let refused = c.post(gw.url("/v1/chat/completions")).bearer_auth(bob).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let v: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "connection_limit");
}

/// The tunnel's upstream side: a backend that refuses the upgrade is passed through (status
/// and body), a backend that is down fails over to the next one, and with none left the
/// client gets an OpenAI-shaped 502.
#[tokio::test]
async fn upgrade_refused_or_unreachable_backends() {
    let sim = spawn_sim(&[]).await;
    let dead = crate::common::free_port();
    let rest = format!(
        "{}providers:\n  - {{ name: pair, url: \"http://{}\", backends: [\"127.0.0.1:{dead}\", \"{}\"], models: [\"*\"] }}\n  - {{ name: gone, url: \"http://127.0.0.1:{dead}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/ws\", provider: pair, websocket: true }}\n  - {{ path: \"/gone/ws\", provider: gone, websocket: true, strip_prefix: \"/gone\" }}\n",
        key_yaml("alice", KEY),
        sim.addr,
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    // Whichever backend the ring names first, the upgrade ends on the live one.
    for _ in 0..4 {
        let mut ws = connect(&gw, "/ws", Some(KEY)).await.expect("failed over to the live backend");
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(next_non_push(&mut ws).await, Message::text("hi"));
    }
    // A WebSocket upgrade the backend refuses (no Sec-WebSocket-Key): its 400 and body pass
    // through, with the request id, and the connection ends there.
    let raw = |path: &str, upgrade: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\nconnection: upgrade\r\nupgrade: {upgrade}\r\n\r\n"
        )
    };
    let t0 = Instant::now();
    let answer = raw_exchange(gw.addr, &raw("/ws", "websocket")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("expected a WebSocket upgrade") && answer.contains("x-request-id"), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(3), "the refused upgrade left the connection open");
    let answer = raw_exchange(gw.addr, &raw("/gone/ws", "websocket")).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("\"type\":\"upstream_error\"") && answer.contains("ConnectRefused"), "{answer}");
}

/// `curl --http2 http://…` offers an h2c upgrade: the gateway declines by ignoring it (no 426)
/// and the offer does not reach the backend.
#[tokio::test]
async fn h2c_upgrade_offers_are_ignored() {
    let sim = spawn_sim(&[]).await;
    let gw = gw(&sim, "", "  - { path: \"/ws\", provider: sim, websocket: true }\n").await;
    let req = format!(
        "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    );
    let answer = raw_exchange_until(gw.addr, &req, "\"path\"").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect(body);
    let headers = v["headers"].as_object().unwrap();
    assert!(!headers.contains_key("upgrade") && !headers.contains_key("http2-settings"), "{headers:?}");
    // On a WebSocket route the same offer is a plain GET too (the sim refuses it as such).
    let req = req.replace("/v1/echo", "/ws");
    let answer = raw_exchange_until(gw.addr, &req, "expected a WebSocket upgrade").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// Like [`raw_exchange`] but stops reading once `until` arrived (keep-alive answers).
async fn raw_exchange_until(addr: std::net::SocketAddr, req: &str, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    // The body may still be arriving after `until`: give it a moment.
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `req` on a fresh connection and reads until the server closes it (or 5 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A tunnel whose backend speaks TLS: gateway B reaches gateway A over HTTPS (verified against
/// a generated CA), A terminates TLS and tunnels to the sim's echo.
#[tokio::test]
async fn websocket_through_a_tls_backend() {
    use crate::common::gateway::{provider_yaml, spawn_gateway_admin_only};
    let cert = crate::common::tls::TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    let tls = cert.listen_yaml("");
    let rest_a = format!(
        "{}{}routes:\n  - {{ path: \"/v1/ws\", provider: sim, websocket: true }}\n",
        key_yaml("b", "inner-key-0123"),
        provider_yaml("sim", &format!("http://{}/v1", sim.addr), "")
    );
    let a = spawn_gateway_admin_only(&tls, &rest_a).await;
    let rest_b = format!(
        "{}providers:\n  - {{ name: a, url: \"https://localhost:{}/v1\", api_key: inner-key-0123, models: [\"*\"], tls: {{ ca_file: \"{}\" }} }}\nroutes:\n  - {{ path: \"/ws\", provider: a, websocket: true }}\n",
        key_yaml("alice", KEY),
        a.addr.port(),
        cert.cert_path.display()
    );
    let b = spawn_gateway("", &rest_b, &[]).await;
    let mut ws = connect(&b, "/ws", Some(KEY)).await.expect("tunnel over TLS");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::text("over tls"));
    let big: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_non_push(&mut ws).await, Message::binary(big));
    ws.close(None).await.unwrap();
}
