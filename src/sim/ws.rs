//! `GET …/ws` with `Upgrade: websocket`: an echo server. Text and binary frames come back as
//! they are; tungstenite answers pings and echoes a Close frame's code and reason.
//! `?push_ms=N` also sends a text frame `push <n>` every N ms (n = 1, 2, …), to keep idle
//! tunnels busy. The first subprotocol a client offers is accepted. Close frames received are
//! counted by code (`mcas_sim_ws_closes_total`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounterVec;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::response::{self, Body};

pub fn upgrade(mut req: Request<Incoming>, closes: IntCounterVec) -> Response<Body> {
    let h = req.headers();
    let wants_ws =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| wants_ws) else {
        return response::bad_request("expected a WebSocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = h
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .and_then(|p| HeaderValue::from_str(p).ok());
    let push = push_period(req.uri().query());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                echo(ws, push, closes).await;
            }
            Err(e) => log::debug!("websocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(response::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = resp.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol {
        out.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

/// `push_ms=N` from the query; absent, zero or unparsable means no pushes.
fn push_period(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix("push_ms="))
        .find_map(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

async fn echo<S>(mut ws: WebSocketStream<S>, push: Option<Duration>, closes: IntCounterVec)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ticker = push.map(|p| {
        let mut t = interval_at(Instant::now() + p, p);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut pushed: u64 = 0;
    loop {
        let msg = match ticker.as_mut() {
            // Biased: reading first also flushes a queued Close echo before any push.
            Some(t) => tokio::select! {
                biased;
                msg = ws.next() => msg,
                _ = t.tick() => {
                    pushed += 1;
                    if ws.send(Message::text(format!("push {pushed}"))).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => ws.next().await,
        };
        match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            // Close: tungstenite has queued the echo; the next read sends it and ends.
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "none".into());
                closes.with_label_values(&[&code]).inc();
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn push_period_from_query() {
        assert_eq!(push_period(Some("a=1&push_ms=20")), Some(Duration::from_millis(20)));
        assert_eq!(push_period(Some("push_ms=0")), None);
        assert_eq!(push_period(Some("push_ms=x")), None);
        assert_eq!(push_period(None), None);
    }
}
