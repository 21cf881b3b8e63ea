//! `routes[].ping`: the gateway pings the client of an idle tunnel. A client that answers stays
//! connected through many pings; a client that stops polling its socket is closed with 1001,
//! and so is the backend; the backend never sees the pongs to the gateway's pings (it does
//! see the pongs to its own). The backend is a raw socket that decodes every frame it gets.

use crate::common::ws::{accept_upgrade, ws_connect, ws_gateway};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "client-key-ping-0123456";
/// The backend's own ping payload, sent right after the 101.
const BACKEND_PING: &[u8; 8] = b"backend1";

/// A backend that accepts one upgrade, pings the client once with [`BACKEND_PING`], and
/// reports every frame it receives as (opcode, unmasked payload).
async fn backend() -> (SocketAddr, mpsc::UnboundedReceiver<(u8, Vec<u8>)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        let Some((mut out, mut buf)) = accept_upgrade(&mut sock).await else { return };
        let mut chunk = vec![0u8; 8192];
        out.extend_from_slice(&[0x89, 8]);
        out.extend_from_slice(BACKEND_PING);
        if sock.write_all(&out).await.is_err() {
            return;
        }
        loop {
            while let Some((frame, used)) = decode(&buf) {
                buf.drain(..used);
                let _ = tx.send(frame);
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    (addr, rx)
}

/// One whole masked frame (client to server, short lengths only) off the front of `b`.
fn decode(b: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if b.len() < 2 {
        return None;
    }
    let len = usize::from(b[1] & 0x7F);
    assert!(len < 126, "test frames are short");
    let need = 2 + 4 + len;
    if b.len() < need {
        return None;
    }
    let key = &b[2..6];
    let payload = b[6..need].iter().enumerate().map(|(i, x)| x ^ key[i % 4]).collect();
    Some(((b[0] & 0x0F, payload), need))
}

/// The next frame the backend got, within 20 s (a generous bound: the test waits for events,
/// not for a time).
async fn frame_at_backend(rx: &mut mpsc::UnboundedReceiver<(u8, Vec<u8>)>) -> (u8, Vec<u8>) {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
        Ok(Some(f)) => f,
        other => panic!("no frame reached the backend: {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_answers_stays_and_its_pongs_to_the_gateway_are_not_forwarded() {
    let (addr, mut at_backend) = backend().await;
    let gw = ws_gateway(addr, KEY, "idle_timeout: 1h, ping: { interval: 300ms, timeout: 400ms }").await;
    let mut ws = ws_connect(&gw, KEY).await;
    // Read (tungstenite answers every ping with a pong as it reads) until the backend's ping
    // and three of the gateway's have come: the tunnel outlived three interval + timeout spans.
    let (mut ours, mut theirs) = (0, 0);
    while ours < 3 || theirs < 1 {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Ping(p)))) if &p[..] == BACKEND_PING => theirs += 1,
            Ok(Some(Ok(Message::Ping(p)))) => {
                assert!(p.starts_with(b"mcas"), "{p:?}");
                ours += 1;
            }
            other => panic!("the tunnel did not stay open: {other:?}"),
        }
    }
    ws.send(Message::text("still here")).await.unwrap();
    // The backend got the pong to its own ping and the text frame, and nothing else: no pong
    // to the gateway's pings, no close.
    assert_eq!(frame_at_backend(&mut at_backend).await, (0xA, BACKEND_PING.to_vec()));
    assert_eq!(frame_at_backend(&mut at_backend).await, (0x1, b"still here".to_vec()));
    assert!(at_backend.try_recv().is_err(), "the backend got more frames than the client's own");
}

#[tokio::test]
async fn a_silenced_client_is_closed_with_1001_on_both_sides() {
    let (addr, mut at_backend) = backend().await;
    let gw = ws_gateway(addr, KEY, "idle_timeout: 1h, ping: { interval: 300ms, timeout: 400ms }").await;
    let mut ws = ws_connect(&gw, KEY).await;
    // The client does not poll its socket: no pong goes back. The backend gets a 1001 close.
    let (opcode, payload) = frame_at_backend(&mut at_backend).await;
    assert_eq!(opcode, 0x8, "a close frame, got {opcode:#x} {payload:?}");
    assert_eq!(payload, vec![0x03, 0xE9], "status 1001");
    // The client, reading again, finds the pings and then the gateway's 1001 close.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                assert_eq!(f.code, CloseCode::Away);
                break;
            }
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    }
}

#[test]
fn ping_needs_a_websocket_route_and_positive_durations() {
    let base = "keys: [{ name: a, key: \"client-key-0123456789\", models: [\"*\"] }]\n\
                providers: [{ name: p, url: \"http://127.0.0.1:9\" }]\nroutes:\n  - ";
    for (route, path) in [
        ("{ path: /ws, provider: p, ping: { interval: 1s } }", "routes[0].ping"),
        ("{ path: /ws, provider: p, websocket: true, ping: { timeout: 0s } }", "routes[0].ping.timeout"),
    ] {
        let (code, out) = crate::common::gateway::check(&format!("{base}{route}\n"), &[]);
        assert_eq!(code, 1, "{route}: {out}");
        assert!(out.contains(path), "{route}: {out}");
    }
    let ok = format!("{base}{{ path: /ws, provider: p, websocket: true, ping: {{ interval: 20s, timeout: 5s }} }}\n");
    let (code, out) = crate::common::gateway::check(&ok, &[]);
    assert_eq!(code, 0, "{out}");
}
