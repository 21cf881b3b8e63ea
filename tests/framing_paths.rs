//! Framing through every path the gateway reaches a backend by: Pingora's proxy loop with a
//! small body and with a body over Pingora's default 64 KiB retry buffer (it once took a
//! subrequest pipe; vendor/patches/0002 sizes the buffer to `server.max_body`), and the
//! heartbeat relay (a route with `heartbeat`). Request bodies framed by `Content-Length`, chunked, and
//! HTTP/2 without a length must reach the upstream byte for byte (sha256 at `mcas-sim`'s echo);
//! answers framed by length, chunked and by the connection's close must reach the client whole;
//! hop-by-hop request headers must stay on the client's hop.

use crate::common::gateway::{key_yaml, spawn_gateway, spawn_gateway_admin_only};
use crate::common::raw_http::read_message;
use crate::common::spawn_sim;
use crate::common::tls::TestCert;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "client-key-0123456789";

/// Routes: `/v1/*` by model through Pingora's loop; `/hb/v1/*`
/// with a heartbeat (the relay, for streamed requests).
fn routes(provider_url: &str) -> String {
    format!(
        "{}providers:\n  - {{ name: sim, url: \"{provider_url}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n  - {{ path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 5s }}\n",
        key_yaml("alice", KEY)
    )
}

/// A JSON body of about `size` bytes that the gateway forwards unchanged: `model` last (the
/// OpenAI SDK's order), and, when streamed, `include_usage` already set.
fn body(size: usize, stream: bool) -> Vec<u8> {
    let mut v = json!({"messages": [{"role": "user", "content": "x".repeat(size)}], "model": "sim-model"});
    if stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    serde_json::to_vec(&v).unwrap()
}

/// The paths: (name, request path, body).
fn paths() -> [(&'static str, &'static str, Vec<u8>); 4] {
    [
        ("proxy loop", "/v1/echo", body(1_000, false)),
        ("proxy loop, large body", "/v1/echo", body(200_000, false)),
        ("heartbeat relay", "/hb/v1/echo", body(1_000, true)),
        ("heartbeat relay, large body", "/hb/v1/echo", body(200_000, true)),
    ]
}

/// The body as a stream of 16 KiB pieces: no `Content-Length` (chunked over HTTP/1.1, DATA
/// frames without a length over HTTP/2).
fn without_length(body: &[u8]) -> reqwest::Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(16 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn request_bodies_of_every_framing_arrive_whole_on_every_path() {
    let cert = TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway_admin_only(&cert.listen_yaml("http2: true"), &routes(&format!("http://{}", sim.addr))).await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.addr.port());
    let client = |h1: bool| {
        let b = reqwest::Client::builder().add_root_certificate(cert.ca()).timeout(Duration::from_secs(20));
        if h1 { b.http1_only() } else { b }.build().unwrap()
    };
    let (h1, h2) = (client(true), client(false));
    let mut failures = Vec::new();
    for (path_name, path, sent) in paths() {
        let framings: [(&str, &reqwest::Client, reqwest::Body, reqwest::Version); 3] = [
            ("content-length", &h1, reqwest::Body::from(sent.clone()), reqwest::Version::HTTP_11),
            ("chunked", &h1, without_length(&sent), reqwest::Version::HTTP_11),
            ("http/2 without length", &h2, without_length(&sent), reqwest::Version::HTTP_2),
        ];
        for (framing, c, b, version) in framings {
            let resp = c
                .post(url(path))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), version, "{path_name}, {framing}");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let got = (status, v["body_len"].as_u64(), v["body_sha256"].as_str().map(str::to_string));
            let want = (200, Some(sent.len() as u64), Some(hex::encode(Sha256::digest(&sent))));
            if got != want {
                failures.push(format!("{path_name}, {framing}: upstream got {got:?}, sent {want:?}: {text}"));
            }
        }
    }
    // Nothing after a body's end either: an empty chunk written as `0\r\n\r\n` ends a chunked
    // body early, and the backend answers the rest as a second (bad) request on the pooled
    // connection.
    let logs = gw.proc.logs();
    for sign in ["more data than expected", "Data received on idle client connection"] {
        if logs.contains(sign) {
            failures.push(format!("the gateway logged {sign:?}: bytes went upstream after a body's end"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{logs}");
}

/// A body of `len` bytes that reads as events, so the heartbeat relay may relay it.
fn events(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("data: {i} {}\n\n", "y".repeat((i % 97) as usize)).as_bytes());
        i += 1;
    }
    out
}

/// A bare HTTP/1.1 upstream: reads one request (header and a `Content-Length` body), answers
/// with [`events`] framed as the path's last segment says (`length`, `chunked`, `close`), then
/// closes the connection.
async fn framing_upstream(answer: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some((head, _)) = read_message(&mut s, &mut buf).await else { return };
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n".to_vec();
                if target.ends_with("/length") {
                    out.extend_from_slice(format!("content-length: {}\r\n\r\n", answer.len()).as_bytes());
                    out.extend_from_slice(&answer);
                } else if target.ends_with("/chunked") {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                    for c in answer.chunks(7_000) {
                        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                        out.extend_from_slice(c);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                } else {
                    out.extend_from_slice(b"connection: close\r\n\r\n");
                    out.extend_from_slice(&answer);
                }
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn answers_of_every_framing_arrive_whole_on_every_path() {
    let answer = events(150_000);
    let upstream = framing_upstream(answer.clone()).await;
    let gw = spawn_gateway("", &routes(&format!("http://{upstream}")), &[]).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut failures = Vec::new();
    for (path_name, path, sent) in paths() {
        for framing in ["length", "chunked", "close"] {
            let path = path.replace("/echo", &format!("/frame/{framing}"));
            let resp = client
                .post(gw.url(&path))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(sent.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let got = resp.bytes().await.map(|b| b.to_vec());
            let got = got.map(|b| (status, b.len(), hex::encode(Sha256::digest(&b))));
            let want = (200, answer.len(), hex::encode(Sha256::digest(&answer)));
            if got.as_ref().ok() != Some(&want) {
                failures.push(format!("{path_name}, answer framed by {framing}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", gw.proc.logs());
}

/// `Connection` and the fields it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`,
/// `TE` and `Trailer` describe the client's hop: no path forwards them to the (pooled) backend
/// connection. (An `Upgrade` that is no WebSocket upgrade is declined before any path is
/// chosen, `streams::h2c_upgrade_offers_are_ignored`; the relay's own removal of it is a unit
/// test in `src/proxy/upstream/request.rs`.)
#[tokio::test]
async fn hop_by_hop_headers_stay_on_the_client_hop() {
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway("", &routes(&format!("http://{}", sim.addr)), &[]).await;
    let hop = [
        ("connection", "keep-alive, X-Hop-Secret"),
        ("x-hop-secret", "s3cr3t"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic dXNlcjpwYXNz"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
    ];
    let mut failures = Vec::new();
    for (path_name, path, sent) in paths() {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            sent.len()
        );
        for (k, v) in hop {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&sent).await.unwrap();
        let text = read_answer(&mut s).await;
        let Some(json_at) = text.find("{\"") else {
            failures.push(format!("{path_name}: no echo in {text:?}"));
            continue;
        };
        let body = &text[json_at..];
        let body = &body[..=body.rfind('}').unwrap_or(body.len() - 1)];
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let headers = v["headers"].as_object().cloned().unwrap_or_default();
        let leaked: Vec<&str> =
            hop.iter().map(|(k, _)| *k).filter(|k| headers.contains_key(*k) && *k != "connection").collect();
        // A `Connection` header of the gateway's own (`keep-alive`/`close`) is the upstream hop's.
        let client_connection = headers.get("connection").and_then(Value::as_str).is_some_and(|c| c.contains("X-Hop"));
        if !leaked.is_empty() || client_connection || v["body_len"].as_u64() != Some(sent.len() as u64) {
            failures.push(format!(
                "{path_name}: the upstream got {leaked:?}, connection {:?}: {body}",
                headers.get("connection")
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Reads an HTTP/1.1 answer until its end (the echo is JSON with a length; the relay's is
/// chunked): until the connection goes quiet for a moment or closes.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut piece)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&piece[..n]),
            _ => break,
        }
        let text = String::from_utf8_lossy(&out);
        if text.ends_with("}") || text.ends_with("0\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
