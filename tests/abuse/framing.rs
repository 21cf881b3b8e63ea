//! Request smuggling shapes and oversized headers, sent over raw TCP against an upstream that
//! records every byte it receives.

use super::{raw, KEY};
use crate::common::gateway::{spawn_gateway, Gw};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw TCP upstream that records every byte it receives, one entry per connection, and
/// answers `200 ok` once the sender has been quiet for 300 ms.
struct Capture {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Capture {
    async fn start() -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Vec<u8>>>> = Default::default();
        let store = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let store = store.clone();
                let idx = {
                    let mut c = store.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(n)) => store.lock().unwrap()[idx].extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                });
            }
        });
        Capture { addr, conns }
    }

    /// What each connection received since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.conns.lock().unwrap())
    }
}

fn body_json(answer: &str) -> Value {
    answer.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null)
}

async fn capture_gateway(cap: &Capture) -> Gw {
    let rest = format!(
        "keys:\n  - {{ name: k, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: cap, url: \"http://{}/v1\", models: [\"*\"], timeouts: {{ read: 3s }} }}\n\
         routes:\n  - {{ path: \"/raw/*\", provider: cap }}\n  - {{ path: \"/v1/*\", provider: by_model }}\n",
        cap.addr
    );
    spawn_gateway("", &rest, &[]).await
}

/// A request head on `path` with the key and `fields` (each ending in CRLF), then `body`.
fn head(method: &str, path: &str, fields: &str, body: &[u8]) -> Vec<u8> {
    let mut v =
        format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n{fields}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";

/// Every byte an upstream connection received reads as at most one request, and nothing of the
/// smuggled one: a request head, then (if any) chunks that never complete a body.
fn assert_unambiguous(name: &str, conns: &[Vec<u8>]) {
    assert!(conns.len() <= 1, "{name}: {} upstream connections", conns.len());
    for c in conns {
        let text = String::from_utf8_lossy(c);
        assert!(!text.contains("smuggled"), "{name}: the smuggled request reached the upstream:\n{text}");
        assert_eq!(text.matches(" HTTP/1.1\r\n").count(), 1, "{name}: not exactly one request head:\n{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert!(!body.contains("0\r\n\r\n"), "{name}: the upstream got a complete body:\n{text}");
    }
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_nothing_ambiguous_goes_upstream() {
    let cap = Capture::start().await;
    let gw = capture_gateway(&cap).await;
    let chunked_then_smuggled = [b"0\r\n\r\n".as_slice(), SMUGGLED].concat();
    let cl_te = format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", chunked_then_smuggled.len());
    let two_cl = format!("Content-Length: 0\r\nContent-Length: {}\r\n", SMUGGLED.len());
    let mut bare_lf =
        format!("POST /raw/x HTTP/1.1\nHost: gw\nAuthorization: Bearer {KEY}\nContent-Length: 0\n\n").into_bytes();
    bare_lf.extend_from_slice(SMUGGLED);
    // Header-level shapes: refused before any upstream is chosen, on either kind of route.
    let header_shapes: Vec<(&str, Vec<u8>)> = vec![
        ("content-length with transfer-encoding", head("POST", "PATH", &cl_te, &chunked_then_smuggled)),
        ("two content-lengths", head("POST", "PATH", &two_cl, SMUGGLED)),
        ("obs-fold", head("POST", "PATH", "X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", SMUGGLED)),
        ("bare LF", bare_lf),
        ("bare LF inside", head("POST", "PATH", "X-A: a\nContent-Length: 0\r\nX-B: b\r\n", SMUGGLED)),
        (
            "te chunked, identity",
            head("POST", "PATH", "Transfer-Encoding: chunked, identity\r\n", &chunked_then_smuggled),
        ),
        (
            "te identity, chunked",
            head("POST", "PATH", "Transfer-Encoding: identity, chunked\r\n", &chunked_then_smuggled),
        ),
        (
            "two transfer-encodings",
            head(
                "POST",
                "PATH",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
    ];
    for path in ["/raw/x", "/v1/chat/completions"] {
        for (name, bytes) in &header_shapes {
            let bytes = String::from_utf8_lossy(bytes).replace("PATH", path).replace("/raw/x", path);
            let (status, answer) = raw(gw.addr, bytes.as_bytes()).await;
            assert_eq!(status, 400, "{name} on {path}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = cap.take();
            assert!(got.iter().all(Vec::is_empty), "{name} on {path}: the upstream received {got:?}");
        }
    }
    // Invalid chunk sizes: on a route whose body streams (octet-stream), the head may already be
    // upstream when the bad chunk arrives; the upstream must never get a whole request.
    let chunk_shapes = [
        ("non-hex chunk size", "zz"),
        ("overflowing chunk size", "ffffffffffffffffff1"),
        ("negative chunk size", "-1"),
        ("0x chunk size", "0x3"),
        ("chunk longer than its size", "3\r\nabcdef"),
    ];
    for path in ["/raw/x", "/v1/chat/completions"] {
        for (name, size) in chunk_shapes {
            let mut body = format!("{size}\r\nabc\r\n0\r\n\r\n").into_bytes();
            body.extend_from_slice(SMUGGLED);
            let fields = "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n";
            let fields = if path == "/raw/x" { fields } else { "Transfer-Encoding: chunked\r\n" };
            let (status, answer) = raw(gw.addr, &head("POST", path, fields, &body)).await;
            assert_eq!(status, 400, "{name} on {path}: {answer}");
            assert_eq!(body_json(&answer)["error"]["type"], "invalid_request_error", "{name}: {answer}");
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_unambiguous(name, &cap.take());
        }
    }
    // The capture works: a plain request arrives whole, once.
    let (status, answer) = raw(
        gw.addr,
        &head(
            "POST",
            "/raw/x",
            "Content-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: close\r\n",
            b"hello",
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = cap.take();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0]).ends_with("\r\n\r\nhello"), "{got:?}");
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let cap = Capture::start().await;
    let gw = capture_gateway(&cap).await;
    let fields = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    let big = |kib: usize| format!("X-Big: {}\r\n", "a".repeat(kib * 1024));
    // Over the gateway's limits (src/framing.rs): its own JSON answer.
    for (name, fields) in [("150 header fields", fields(150)), ("a 100 KiB header", big(100))] {
        let (status, answer) = raw(gw.addr, &head("GET", "/raw/x", &fields, b"")).await;
        assert_eq!(status, 431, "{name}: {answer}");
        assert_eq!(body_json(&answer)["error"]["code"], "request_header_fields_too_large", "{name}: {answer}");
    }
    // Over Pingora's own (256 fields, 1 MiB): Pingora answers before any hook, 431 with the
    // patch in vendor/patches/0001-answer-431-to-request-headers-over-the-limits.patch.
    for (name, fields) in [("300 header fields", fields(300)), ("a 2 MiB header", big(2048))] {
        let (status, answer) = raw(gw.addr, &head("GET", "/raw/x", &fields, b"")).await;
        assert_eq!(status, 431, "{name}: {}", answer.lines().next().unwrap_or(""));
    }
    // Under the limits, the same kind of request goes through.
    let (status, answer) =
        raw(gw.addr, &head("GET", "/raw/x", &format!("{}Connection: close\r\n", fields(90)), b"")).await;
    assert_eq!(status, 200, "{answer}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cap.take().len(), 1, "only the request under the limits reached the upstream");
}
