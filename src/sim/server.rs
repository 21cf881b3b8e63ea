//! The accept loop (hyper 1, HTTP/1.1 with keep-alive and upgrades) and the dispatch of each
//! request: route, key check, `x-sim-status`, endpoint, then the replica header and the
//! request counter on every answer.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::completion::{self, number};
use super::config::SimConfig;
use super::openai::Kind;
use super::replica::Replica;
use super::response::{self, Body};
use super::route::{classify, Endpoint};
use super::{echo, gzip, ws};

pub const X_MCAS_REPLICA: HeaderName = HeaderName::from_static("x-mcas-replica");

/// Serves one replica forever on an already bound listener (callers pick the port).
/// Fails only on a bad config; accept errors (e.g. out of file descriptors) are logged and
/// retried after 10 ms.
pub async fn serve(listener: TcpListener, cfg: SimConfig) -> io::Result<()> {
    let replica = Arc::new(Replica::new(cfg, listener.local_addr()?.port())?);
    // The replica model's scheduler lives exactly as long as the accept loop.
    let engine = replica.engine.clone();
    let scheduler = async move {
        match engine {
            Some(e) => e.run().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = scheduler => Ok(()),
        r = accept_loop(listener, replica) => r,
    }
}

async fn accept_loop(listener: TcpListener, replica: Arc<Replica>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("mcas-sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small SSE events must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let replica = replica.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let replica = replica.clone();
                async move { Ok::<_, Infallible>(handle(&replica, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("mcas-sim: connection ended: {e}");
            }
        });
    }
}

async fn handle(r: &Replica, req: Request<Incoming>) -> Response<Body> {
    let endpoint = classify(req.method(), req.uri().path());
    let mut resp = dispatch(r, endpoint, req).await;
    if r.cfg.force_gzip {
        resp = gzip::force(resp);
    }
    resp.headers_mut().insert(X_MCAS_REPLICA, r.name.clone());
    r.metrics.answered(endpoint, resp.status().as_u16());
    resp
}

async fn dispatch(r: &Replica, endpoint: Endpoint, req: Request<Incoming>) -> Response<Body> {
    let needs_key = match endpoint {
        Endpoint::Health => r.cfg.health_requires_key,
        e => e.is_openai() || req.uri().path().contains("/v1/"),
    };
    if needs_key && !r.authorized(req.headers().get(header::AUTHORIZATION)) {
        return response::error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            "invalid_api_key",
        );
    }
    match number(req.headers(), "x-sim-status") {
        Ok(None) => {}
        Ok(Some(code)) => {
            // 1xx would break the exchange; 200..=599 all get an OpenAI error body.
            return match u16::try_from(code).ok().filter(|c| (200..600).contains(c)) {
                Some(c) => response::status_error(
                    StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "simulated status",
                ),
                None => response::bad_request("x-sim-status: expected 200..599"),
            };
        }
        Err(msg) => return response::bad_request(&msg),
    }
    match endpoint {
        Endpoint::Chat => completion::handle(r, Kind::Chat, req).await,
        Endpoint::Completions => completion::handle(r, Kind::Text, req).await,
        Endpoint::Models => response::json(StatusCode::OK, r.models_body.clone()),
        Endpoint::Health => {
            response::with_body(StatusCode::OK, HeaderValue::from_static("text/plain"), response::empty())
        }
        Endpoint::Metrics => response::with_body(
            StatusCode::OK,
            HeaderValue::from_static("text/plain; version=0.0.4"),
            response::full([r.metrics.render(), r.lora.render().into_bytes()].concat()),
        ),
        Endpoint::Echo => echo::handle(r, req).await,
        Endpoint::Ws => ws::upgrade(req, r.metrics.ws_closes.clone()),
        e @ (Endpoint::Embeddings
        | Endpoint::Audio
        | Endpoint::Rerank
        | Endpoint::Score
        | Endpoint::Tokenize
        | Endpoint::Detokenize) => super::surface::handle(r, e, req).await,
        Endpoint::Responses => {
            let path = req.uri().path().to_string();
            let rest = path.split_once("/v1/responses").map_or("", |(_, rest)| rest).to_string();
            super::responses::handle(r, req, &rest).await
        }
        Endpoint::NotFound => response::error(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {}", req.method(), req.uri().path()),
            "invalid_request_error",
            "not_found",
        ),
    }
}
