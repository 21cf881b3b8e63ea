//! Channel health (`GET /status`, JSON, 503 when unhealthy) and `GET /metrics` on a small
//! local listener, plus the tiny hyper server loop the webhook listener shares.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// What `/status` reports. Error texts stored here are already free of secrets (Bot API
/// errors never carry URLs; gateway errors never carry the key).
pub struct Health {
    started: SystemTime,
    webhook: bool,
    /// In polling mode, no successful `getUpdates` for this long means the poller is stuck.
    stale_after: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    telegram_ok: bool,
    telegram_error: Option<String>,
    last_telegram_ok: Option<SystemTime>,
    last_poll: Option<SystemTime>,
    /// `None` until the first probe or request says.
    gateway_ok: Option<bool>,
    gateway_error: Option<String>,
    last_gateway_ok: Option<SystemTime>,
}

fn unix(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(Value::Null, |d| json!(d.as_secs()))
}

impl Health {
    pub fn new(webhook: bool, poll_timeout: Duration) -> Health {
        Health {
            started: SystemTime::now(),
            webhook,
            stale_after: poll_timeout * 2 + Duration::from_secs(30),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the data is still plain values.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Outcome of a Bot API call that says whether Telegram is reachable (`getMe`, polls).
    pub fn telegram(&self, result: Result<(), String>, poll: bool) {
        let now = SystemTime::now();
        self.with(|h| match result {
            Ok(()) => {
                h.telegram_ok = true;
                h.telegram_error = None;
                h.last_telegram_ok = Some(now);
                if poll {
                    h.last_poll = Some(now);
                }
            }
            Err(e) => {
                h.telegram_ok = false;
                h.telegram_error = Some(e);
            }
        })
    }

    /// Outcome of a gateway probe or request.
    pub fn gateway(&self, result: Result<(), String>) {
        let now = SystemTime::now();
        self.with(|h| match result {
            Ok(()) => {
                h.gateway_ok = Some(true);
                h.gateway_error = None;
                h.last_gateway_ok = Some(now);
            }
            Err(e) => {
                h.gateway_ok = Some(false);
                h.gateway_error = Some(e);
            }
        })
    }

    /// (healthy, JSON body).
    pub fn report(&self, metrics: &Metrics) -> (bool, Value) {
        let now = SystemTime::now();
        self.with(|h| {
            let mut problems = Vec::new();
            if !h.telegram_ok {
                problems.push("telegram unreachable");
            }
            let since = h.last_poll.unwrap_or(self.started);
            let age = now.duration_since(since).unwrap_or_default();
            if !self.webhook && age > self.stale_after {
                problems.push("no successful poll recently");
            }
            match h.gateway_ok {
                Some(true) => {}
                Some(false) => problems.push("gateway unreachable"),
                None => problems.push("gateway not checked yet"),
            }
            let healthy = problems.is_empty();
            let body = json!({
                "healthy": healthy,
                "problems": problems,
                "mode": if self.webhook { "webhook" } else { "polling" },
                "telegram": {
                    "reachable": h.telegram_ok,
                    "last_ok": unix(h.last_telegram_ok),
                    "last_poll": unix(h.last_poll),
                    "last_error": h.telegram_error,
                },
                "gateway": {
                    "reachable": h.gateway_ok,
                    "last_ok": unix(h.last_gateway_ok),
                    "last_error": h.gateway_error,
                },
                "messages_handled": metrics.handled.get(),
                "errors": metrics.error_count(),
                "uptime_seconds": now.duration_since(self.started).unwrap_or_default().as_secs(),
            });
            (healthy, body)
        })
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Answers `/status` and `/metrics`.
pub fn status_handler(
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<HttpResponse> + Clone + Send + 'static {
    move |req| {
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/status") => {
                let (healthy, body) = health.report(&metrics);
                let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                respond(code, "application/json", body.to_string())
            }
            (&Method::GET, "/metrics") => respond(StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        };
        std::future::ready(resp)
    }
}

/// Serves HTTP/1 on `listener` until the task is dropped.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                log::debug!("http connection: {e}");
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_both_sides_are() {
        let m = Metrics::new().unwrap();
        let h = Health::new(false, Duration::from_secs(30));
        assert!(!h.report(&m).0, "nothing known yet");
        h.telegram(Ok(()), true);
        h.gateway(Ok(()));
        let (ok, body) = h.report(&m);
        assert!(ok, "{body}");
        h.gateway(Err("gateway unreachable: connection refused".into()));
        let (ok, body) = h.report(&m);
        assert!(!ok);
        assert_eq!(body["gateway"]["reachable"], json!(false));
        assert_eq!(body["problems"], json!(["gateway unreachable"]));
    }
}
