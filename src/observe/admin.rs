//! The admin listener (default 127.0.0.1:18081): `GET /metrics` (Prometheus text),
//! `GET /health` (JSON: status, version, uptime, providers and backends), `POST /reload`,
//! `GET /metrics/dashboard` (a live page, src/observe/dashboard/) and its JSON.
//!
//! `admin.token` is a bearer token. When it is set, every admin endpoint needs it
//! (`Authorization: Bearer <token>`, 401 otherwise), except the dashboard's static page, script
//! and style sheet (compiled in, no data; the JSON they read needs the token). `POST /reload` needs it always: with no
//! token configured it is refused (403) — anything that can reach the listener could otherwise
//! swap the configuration in; SIGHUP still reloads. A listener on a non-loopback address
//! without a token is refused at load (see `config::compile`).

use super::metrics::metrics;
use crate::fleet::circuit::CircuitState;
use crate::fleet::{Backend, Provider};
use crate::reload::Reloader;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// `admin.token`, kept as its SHA-256: comparing digests in constant time leaks neither the
/// token nor its length.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

/// Shortest `admin.token` accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, String> {
        if token.trim().len() != token.len() {
            return Err("must not start or end with white space".into());
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`, via \"${{MCAS_ADMIN_TOKEN}}\")"
            ));
        }
        Ok(AdminToken(crate::keys::sha256(token.as_bytes())))
    }

    /// Whether `authorization` is `Bearer <the token>` (scheme case-insensitive).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else { return false };
        let Some(scheme) = value.get(..7) else { return false };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let candidate = crate::keys::sha256(value[7..].trim_ascii());
        bool::from(self.0.ct_eq(&candidate))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The dashboard's page, script and style sheet: compiled in, the same for everyone, holding
/// no data; served without the token so a browser can load them and then ask for the token
/// the JSON needs (see dashboard.js).
fn static_asset(method: &str, path: &str) -> Option<Response<Vec<u8>>> {
    use super::dashboard::{CSS, HTML, JS};
    let (body, content_type) = match (method, path) {
        ("GET", "/metrics/dashboard") => (HTML, "text/html; charset=utf-8"),
        ("GET", "/metrics/dashboard.js") => (JS, "text/javascript; charset=utf-8"),
        ("GET", "/metrics/dashboard.css") => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = reply(StatusCode::OK, content_type, body.as_bytes().to_vec());
    // Nothing but the gateway's own files and JSON: no CDN, no inline script.
    r.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    Some(r)
}

/// The refusal to send when the request may not reach the endpoint; `None`: it may.
fn refusal(token: Option<&AdminToken>, reload: bool, authorization: Option<&[u8]>) -> Option<Response<Vec<u8>>> {
    match token {
        Some(t) if t.accepts(authorization) => None,
        Some(_) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "admin endpoints need admin.token: send `Authorization: Bearer <admin.token>`",
                "authentication_error",
                "invalid_admin_token",
            );
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            Some(r)
        }
        None if reload => Some(error(
            StatusCode::FORBIDDEN,
            "POST /reload is refused while admin.token is not set; set admin.token (and send it as a \
             bearer token) or reload with SIGHUP (systemctl kill -s HUP --kill-whom=main mcas-gateway)",
            "permission_error",
            "admin_token_required",
        )),
        None => None,
    }
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response<Vec<u8>> {
    let body = json!({"error": {"message": message, "type": kind, "code": code}});
    reply(status, "application/json", body.to_string().into_bytes())
}

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

/// What a backend's gauges and its `/health` object share, read once.
struct BackendNow {
    up: bool,
    circuit: CircuitState,
    sessions: usize,
    address: String,
}

impl BackendNow {
    fn of(p: &Provider, b: &Backend, now: u64) -> Self {
        BackendNow {
            up: p.usable(b, now),
            circuit: b.circuit.state(),
            sessions: b.sessions.load(Ordering::Relaxed),
            address: b.addr.to_string(),
        }
    }

    /// `mcas_backend_up`, `mcas_backend_circuit_open` and `mcas_backend_sessions`.
    fn set_gauges(&self, provider: &str) {
        let Some(m) = metrics() else { return };
        let labels = [provider, self.address.as_str()];
        m.backend_up.with_label_values(&labels).set(self.up as i64);
        m.circuit_open.with_label_values(&labels).set((self.circuit == CircuitState::Open) as i64);
        m.backend_sessions.with_label_values(&labels).set(i64::try_from(self.sessions).unwrap_or(i64::MAX));
    }
}

/// One backend's object in `/health`; refreshes its gauges on the way.
fn backend_health(p: &Provider, i: usize, b: &Backend, now: u64) -> serde_json::Value {
    let n = BackendNow::of(p, b, now);
    n.set_gauges(&p.name);
    let BackendNow { up, circuit, sessions, address } = n;
    let replica = p.inference.as_ref().and_then(|s| s.replicas.get(i));
    // The last fresh scrape, shown in `inference` and as the dashboard's KV-cache column (0..1).
    let last = replica.and_then(|r| r.last().filter(|_| !r.is_stale()));
    let inference = replica.map(|r| {
        json!({
            "stale": r.is_stale(),
            "waiting": last.map(|s| s.waiting),
            "running": last.map(|s| s.running),
            "kv_cache": last.map(|s| s.kv),
            "inflight_tokens": r.inflight_tokens(),
            "learned": r.learned(),
        })
    });
    let lora = p.lora.as_ref().and_then(|s| s.replicas.get(i)).map(|r| json!({ "served": r.served(), "hot": r.hot() }));
    json!({
        "inference": inference,
        "lora": lora,
        "kv_cache": last.map(|s| s.kv),
        "address": address,
        "weight": b.weight,
        "healthy": b.health.is_up(),
        "in_rotation": up,
        "circuit": circuit.as_str(),
        "consecutive_failures": b.health.consecutive_failures(),
        "inflight": b.inflight.load(Ordering::Relaxed),
        "sessions": sessions,
    })
}

impl AdminApp {
    /// Runs the reload off the listener's threads: it reads and compiles a file, and waits
    /// its turn behind any reload already running.
    async fn reload(&self) -> Result<(), crate::config::ConfigErrors> {
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(result) => result,
            Err(e) => Err(crate::config::ConfigError::new("", format!("reload did not finish: {e}")).into()),
        }
    }

    /// The backend gauges, refreshed before `/metrics` renders them (without building the
    /// `/health` document around them).
    fn refresh_gauges(&self) {
        let rt = self.reloader.runtime.load();
        let now = crate::clock::now_ms();
        for p in &rt.providers {
            for b in &p.backends {
                BackendNow::of(p, b, now).set_gauges(&p.name);
            }
        }
    }

    fn health(&self) -> serde_json::Value {
        let rt = self.reloader.runtime.load();
        let now = crate::clock::now_ms();
        let providers: Vec<_> = rt
            .providers
            .iter()
            .map(|p| {
                let backends: Vec<_> =
                    p.backends.iter().enumerate().map(|(i, b)| backend_health(p, i, b, now)).collect();
                json!({
                    "name": &*p.name,
                    "healthy": p.any_usable(now),
                    "balance": p.fleet.balance.as_str(),
                    "probed": p.fleet.health.is_some(),
                    "queued": p.inference.as_ref().map(|s| s.queue.len()),
                    "backends": backends,
                    "discovery": crate::fleet::discover::status::snapshot(&p.name),
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
        if let Some(page) = static_asset(method.as_str(), &path) {
            return page;
        }
        let token = self.reloader.runtime.load().admin_token.clone();
        let authorization = session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        if let Some(refused) = refusal(token.as_ref(), path == "/reload", authorization) {
            return refused;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                // Refresh the backend gauges before rendering.
                self.refresh_gauges();
                let body = metrics().map(|m| m.render()).unwrap_or_default();
                reply(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            ("GET", "/metrics/dashboard.json") => {
                let providers = self.health()["providers"].take();
                let body = super::dashboard::snapshot(providers).to_string().into_bytes();
                let mut r = reply(StatusCode::OK, "application/json", body);
                r.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
                r
            }
            ("GET", "/health") => reply(StatusCode::OK, "application/json", self.health().to_string().into_bytes()),
            ("POST", "/reload") => match self.reload().await {
                Ok(()) => reply(StatusCode::OK, "application/json", br#"{"status":"reloaded"}"#.to_vec()),
                Err(e) => {
                    let body = json!({"status": "rejected", "errors": e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>()});
                    reply(StatusCode::UNPROCESSABLE_ENTITY, "application/json", body.to_string().into_bytes())
                }
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":{"message":"admin endpoints: GET /metrics, GET /metrics/dashboard, GET /health, POST /reload","type":"invalid_request_error","code":"not_found"}}"#.to_vec(),
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123";

    #[test]
    fn token_is_checked() {
        let t = AdminToken::new(TOKEN).unwrap();
        assert!(t.accepts(Some(format!("Bearer {TOKEN}").as_bytes())));
        assert!(t.accepts(Some(format!("bearer {TOKEN}").as_bytes())));
        assert!(!t.accepts(Some(format!("Bearer {TOKEN}x").as_bytes())));
        assert!(!t.accepts(Some(TOKEN.as_bytes())));
        assert!(!t.accepts(Some(b"Bearer")));
        assert!(!t.accepts(None));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new(" padded-token-value-123 ").is_err());
        assert!(!format!("{t:?}").contains(TOKEN));
    }

    #[test]
    fn reload_needs_a_token_and_a_token_guards_everything() {
        assert_eq!(refusal(None, true, None).unwrap().status(), StatusCode::FORBIDDEN);
        assert!(refusal(None, false, None).is_none());
        let t = AdminToken::new(TOKEN).unwrap();
        let good = format!("Bearer {TOKEN}");
        assert_eq!(refusal(Some(&t), false, None).unwrap().status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refusal(Some(&t), true, Some(b"Bearer nope")).unwrap().status(), StatusCode::UNAUTHORIZED);
        assert!(refusal(Some(&t), true, Some(good.as_bytes())).is_none());
        assert!(refusal(Some(&t), false, Some(good.as_bytes())).is_none());
    }
}
