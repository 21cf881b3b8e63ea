//! A capture upstream: records every request exactly as it arrived (method, target, headers,
//! body) so a test can prove what reached the upstream, and answers `…/models` with a list it
//! is told to serve, anything else with a small JSON echo.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The whole request as text (for "the key appears nowhere" checks).
    pub fn text(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{} {}\n{}\n\n{}", self.method, self.target, headers.join("\n"), String::from_utf8_lossy(&self.body))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub const MODELS: &str = r#"{"object":"list","data":[{"id":"allowed-a","object":"model"},{"id":"secret-b","object":"model"},{"id":"allowed-c","object":"model"},{"id":"secret-d","object":"model"}]}"#;

#[derive(Clone)]
pub struct Capture {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    models: Arc<Mutex<String>>,
}

impl Capture {
    pub async fn start() -> Capture {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cap = Capture {
            addr: listener.local_addr().unwrap(),
            seen: Default::default(),
            models: Arc::new(Mutex::new(MODELS.to_string())),
        };
        let c = cap.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let c = c.clone();
                        async move { Ok::<_, std::convert::Infallible>(c.answer(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        cap
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        let seen = Seen {
            method: parts.method.to_string(),
            target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body,
        };
        let path = parts.uri.path().trim_end_matches('/').to_string();
        self.seen.lock().unwrap().push(seen.clone());
        let out = if path.ends_with("/models") {
            self.models.lock().unwrap().clone()
        } else {
            serde_json::json!({"path": seen.target, "body_len": seen.body.len()}).to_string()
        };
        Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(out))).unwrap()
    }

    /// What the model list endpoint answers from now on.
    pub fn serve_models(&self, body: &str) {
        *self.models.lock().unwrap() = body.to_string();
    }

    /// Everything received so far, and forgets it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
