//! WebSocket tunnel fixtures: a gateway with one `/ws` route to a raw test backend, a client
//! connected through it, and the backend's side of the handshake.

use super::gateway::{key_yaml, spawn_gateway, Gw};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway whose `/ws` route (`websocket: true`, then `route_extra`, e.g. `idle_timeout: 10s`)
/// tunnels to `addr`, with one key `alice` = `key`.
pub async fn ws_gateway(addr: SocketAddr, key: &str, route_extra: &str) -> Gw {
    let rest = format!(
        "{}providers:\n  - {{ name: up, url: \"http://{addr}\", models: [\"*\"] }}\n\
         routes:\n  - {{ path: \"/ws\", provider: up, websocket: true, {route_extra} }}\n",
        key_yaml("alice", key)
    );
    spawn_gateway("", &rest, &[]).await
}

/// A WebSocket client on the gateway's `/ws`, authorised with `key`.
pub async fn ws_connect(gw: &Gw, key: &str) -> Ws {
    let mut req = format!("ws://{}/ws", gw.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The backend's side of an upgrade: reads the request head off `sock` and returns the 101
/// that accepts it, with the bytes that came after the head; `None` when the client left first.
pub async fn accept_upgrade(sock: &mut tokio::net::TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let end = super::raw_http::read_head(sock, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let ws_key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let accept = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(ws_key.as_bytes())
    );
    Some((accept.into_bytes(), buf.split_off(end)))
}
