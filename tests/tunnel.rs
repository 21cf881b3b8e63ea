//! The WebSocket tunnel against a raw test backend: a client that stops reading while the
//! backend floods it does not hold up its own frames to the backend; bytes the backend sends
//! together with its 101 reach the client; a refused upgrade's body reaches the client intact
//! whatever its framing (length, chunked, until close).

use crate::common::gateway::{key_yaml, raw_upgrade, spawn_gateway};
use crate::common::ws::{accept_upgrade, ws_connect, ws_gateway, Ws};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "client-key-tunnel-0123";

/// What the test backend does with an upgrade request.
#[derive(Clone)]
enum Answer {
    /// 101 with `first` in the same write; then binary frames without end if `flood`.
    Accept { first: Vec<u8>, flood: bool },
    /// These bytes (a whole refusal: header and body), then close.
    Refuse(Vec<Vec<u8>>),
}

/// A backend on a raw socket. Everything the client sends after the handshake arrives on the
/// receiver; the counter holds how many flood bytes the backend could write so far.
async fn backend(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let flooded = Arc::new(AtomicU64::new(0));
    let counter = flooded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            tokio::spawn(serve(sock, answer.clone(), tx.clone(), counter.clone()));
        }
    });
    (addr, rx, flooded)
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    answer: Answer,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    flooded: Arc<AtomicU64>,
) {
    // What the client sent after its request head is not looked at (it sends nothing before the 101).
    let Some((accept, _)) = accept_upgrade(&mut sock).await else { return };
    let mut buf = vec![0u8; 8192];
    match answer {
        Answer::Refuse(parts) => {
            for p in parts {
                if sock.write_all(&p).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = sock.shutdown().await;
        }
        Answer::Accept { first, flood } => {
            let mut out = accept;
            out.extend_from_slice(&first);
            if sock.write_all(&out).await.is_err() {
                return;
            }
            let (mut rd, mut wr) = sock.into_split();
            if flood {
                tokio::spawn(async move {
                    // Unmasked binary frames of 16 KiB (126: a 16-bit length follows).
                    let mut frame = vec![0x82, 126, 0x40, 0x00];
                    frame.extend(std::iter::repeat_n(b'x', 16 * 1024));
                    while wr.write_all(&frame).await.is_ok() {
                        flooded.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    }
                });
            } else {
                tokio::spawn(async move {
                    let _keep = wr;
                    std::future::pending::<()>().await
                });
            }
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                }
            }
        }
    }
}

/// The client stops reading while the backend floods it; the frame the client sends then
/// reaches the backend at once, not after the idle timeout (10 s). (The tunnel used to write
/// to the client before reading it again, so the client's frame waited behind the flood.)
#[tokio::test]
async fn client_frames_pass_while_the_client_does_not_read() {
    let (addr, mut from_client, flooded) = backend(Answer::Accept { first: Vec::new(), flood: true }).await;
    let gw = ws_gateway(addr, KEY, "idle_timeout: 10s").await;
    let mut ws = ws_connect(&gw, KEY).await;
    // Wait until every buffer between the backend and the client is full: the flood stalls.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = flooded.load(Ordering::Relaxed);
        if now > 0 && now == last {
            break;
        }
        last = now;
    }
    let t0 = Instant::now();
    ws.send(Message::text("hello")).await.unwrap();
    // A masked 5-byte text frame is 11 bytes on the wire.
    let mut got = Vec::new();
    while got.len() < 11 {
        match tokio::time::timeout(Duration::from_secs(3), from_client.recv()).await {
            Ok(Some(bytes)) => got.extend(bytes),
            other => panic!("client frame stuck behind the flood after {:?}: {other:?}", t0.elapsed()),
        }
    }
    assert_eq!(got[0], 0x81, "a text frame: {got:?}");
    eprintln!("client frame reached the backend after {:?} ({last} flood bytes buffered)", t0.elapsed());
    // The client reads again: the flood flows on.
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(b.len(), 16 * 1024),
        other => panic!("flood did not resume: {other:?}"),
    }
}

/// A backend that sends its first frame in the same packet as the 101: the client gets it.
#[tokio::test]
async fn bytes_sent_with_the_101_reach_the_client() {
    let mut first = vec![0x81, 5];
    first.extend_from_slice(b"first");
    first.extend_from_slice(&[0x82, 3, 1, 2, 3]);
    let (addr, mut from_client, _) = backend(Answer::Accept { first, flood: false }).await;
    let gw = ws_gateway(addr, KEY, "idle_timeout: 10s").await;
    let mut ws = ws_connect(&gw, KEY).await;
    assert_eq!(next(&mut ws).await, Message::text("first"));
    assert_eq!(next(&mut ws).await, Message::binary(vec![1, 2, 3]));
    ws.send(Message::text("back")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), from_client.recv()).await.unwrap().unwrap();
    assert_eq!(got[0], 0x81);
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("frame in time").unwrap().unwrap()
}

/// Deterministic bytes that are not text.
fn body(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn refused(parts: Vec<Vec<u8>>) -> (u16, Vec<u8>) {
    let (addr, _, _) = backend(Answer::Refuse(parts)).await;
    let gw = ws_gateway(addr, KEY, "idle_timeout: 10s").await;
    let resp = raw_upgrade(&gw.url("/ws"), KEY).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// A refused upgrade (401 with a binary body) reaches the client byte for byte, framed by
/// Content-Length, chunked (in pieces, with a chunk extension and a trailer), or by close.
#[tokio::test]
async fn refusal_bodies_arrive_intact_in_every_framing() {
    let data = body(100_000);
    let want = Sha256::digest(&data);
    let head = |framing: &str| {
        format!("HTTP/1.1 401 Unauthorized\r\ncontent-type: application/octet-stream\r\n{framing}\r\n").into_bytes()
    };

    let mut length = head(&format!("content-length: {}\r\n", data.len()));
    length.extend_from_slice(&data[..1000]);
    let (status, got) = refused(vec![length, data[1000..].to_vec()]).await;
    assert_eq!(status, 401);
    assert_eq!(Sha256::digest(&got), want, "content-length: {} bytes", got.len());

    let mut parts = vec![head("transfer-encoding: chunked\r\n")];
    for (i, piece) in data.chunks(7000).enumerate() {
        let ext = if i == 1 { ";name=value" } else { "" };
        let mut p = format!("{:x}{ext}\r\n", piece.len()).into_bytes();
        p.extend_from_slice(piece);
        p.extend_from_slice(b"\r\n");
        parts.push(p);
    }
    parts.push(b"0\r\nx-trailer: 1\r\n\r\n".to_vec());
    let (status, got) = refused(parts).await;
    assert_eq!(status, 401);
    assert_eq!(Sha256::digest(&got), want, "chunked: {} bytes", got.len());

    let (status, got) =
        refused(vec![head("connection: close\r\n"), data[..50_000].to_vec(), data[50_000..].to_vec()]).await;
    assert_eq!(status, 401);
    assert_eq!(Sha256::digest(&got), want, "until close: {} bytes", got.len());
}

/// Measurement, not a check: gateway memory per idle tunnel (RSS growth over 300 tunnels to
/// the sim's echo, divided by 300). `cargo test --test it tunnel::memory -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn memory_per_idle_tunnel() {
    let sim = crate::common::spawn_sim(&[]).await;
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/ws\", provider: sim, websocket: true }}\n",
        key_yaml("alice", KEY),
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    // Warm up allocator and runtime with a few tunnels first.
    let mut warm = Vec::new();
    for _ in 0..20 {
        let mut ws = ws_connect(&gw, KEY).await;
        ws.send(Message::text("x")).await.unwrap();
        let _ = next(&mut ws).await;
        warm.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.proc.rss_kib();
    let mut open = Vec::new();
    for _ in 0..300 {
        let mut ws = ws_connect(&gw, KEY).await;
        ws.send(Message::text("x")).await.unwrap();
        let _ = next(&mut ws).await;
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.proc.rss_kib();
    eprintln!("idle tunnels: RSS {before} KiB -> {after} KiB, {:.1} KiB per tunnel", (after - before) as f64 / 300.0);
}
