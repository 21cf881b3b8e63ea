//! The admin listener (default 127.0.0.1:18081): `GET /metrics` (Prometheus text),
//! `GET /health` (JSON: status, version, uptime, providers and backends), `POST /reload`.

use super::metrics::metrics;
use crate::reload::Reloader;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct AdminApp {
    pub reloader: Reloader,
    pub started: Instant,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = r.body().len().to_string().parse() {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r
}

impl AdminApp {
    fn health(&self) -> serde_json::Value {
        let rt = self.reloader.runtime.load();
        let now = crate::upstream::clock::now_ms();
        let providers: Vec<_> = rt
            .providers
            .iter()
            .map(|p| {
                let backends: Vec<_> = p
                    .backends
                    .iter()
                    .map(|b| {
                        let up = p.usable(b, now);
                        if let Some(m) = metrics() {
                            m.backend_up.with_label_values(&[&*p.name, b.addr.to_string().as_str()]).set(up as i64);
                        }
                        json!({
                            "address": b.addr.to_string(),
                            "weight": b.weight,
                            "healthy": b.health.is_up(),
                            "in_rotation": up,
                            "circuit": b.circuit.state().as_str(),
                            "consecutive_failures": b.health.consecutive_failures(),
                            "inflight": b.inflight.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({
                    "name": &*p.name,
                    "healthy": p.any_usable(now),
                    "balance": p.fleet.balance.as_str(),
                    "probed": p.fleet.health.is_some(),
                    "backends": backends,
                })
            })
            .collect();
        let all_up = rt.providers.iter().all(|p| p.any_usable(now));
        json!({
            "status": if all_up { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "providers": providers,
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                // Refresh the backend gauges before rendering.
                let _ = self.health();
                let body = metrics().map(|m| m.render()).unwrap_or_default();
                reply(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            ("GET", "/health") => reply(StatusCode::OK, "application/json", self.health().to_string().into_bytes()),
            ("POST", "/reload") => match self.reloader.reload() {
                Ok(()) => reply(StatusCode::OK, "application/json", br#"{"status":"reloaded"}"#.to_vec()),
                Err(e) => {
                    let body = json!({"status": "rejected", "errors": e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>()});
                    reply(StatusCode::UNPROCESSABLE_ENTITY, "application/json", body.to_string().into_bytes())
                }
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":{"message":"admin endpoints: GET /metrics, GET /health, POST /reload","type":"invalid_request_error","code":"not_found"}}"#.to_vec(),
            ),
        }
    }
}
