//! Route: match the path, read a JSON body (bounded) to learn `model` and `stream`, check the
//! key may use the model, pick the provider, and decide how the body reaches the upstream.

use super::ctx::Routed;
use crate::auth::KeyEntry;
use crate::error::GatewayError;
use crate::routes::Target;
use crate::runtime::Runtime;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// Pingora replays a body read in `request_filter` only from its retry buffer, which holds
/// 64 KiB (`BODY_BUF_LIMIT` in pingora-core); larger bodies go through a subrequest pipe.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// How the request body reaches the upstream.
pub enum BodyPlan {
    /// Not read (no body, or not JSON): Pingora streams it.
    Untouched,
    /// Read whole and small: Pingora replays it from its retry buffer (the bytes are kept for
    /// the heartbeat relay, which replays them itself).
    Replay(Vec<Bytes>),
    /// Read whole and too large to replay: hand these bytes to a subrequest.
    Pipe(Vec<Bytes>),
}

/// The fields of an OpenAI request body the gateway needs; everything else is skipped.
#[derive(serde::Deserialize, Default)]
struct Peek {
    model: Option<String>,
    stream: Option<bool>,
}

pub struct Decision {
    pub routed: Routed,
    pub body: BodyPlan,
}

pub struct RequestMeta {
    pub request_id: String,
    pub started: Instant,
    pub client_ip: Option<String>,
    pub client_proto: &'static str,
}

pub async fn decide(
    session: &mut Session,
    rt: &Arc<Runtime>,
    key: Arc<KeyEntry>,
    meta: RequestMeta,
) -> Result<Result<Decision, GatewayError>> {
    let path = session.req_header().uri.path().to_string();
    let Some(route) = rt.routes.find(&path) else {
        return Ok(Err(GatewayError::NotFound(safe_path(&path))));
    };
    let route_label = route.label.clone();
    let (mut plan, mut peek) = (BodyPlan::Untouched, Peek::default());
    // MCP bodies are JSON-RPC for the backend only (batches are arrays): never parsed here.
    let mcp = route.opts.kind == crate::routes::RouteKind::Mcp;
    if !mcp && wants_json_read(session) {
        let body = match read_body(session, rt.server.max_body).await? {
            Ok(chunks) => chunks,
            Err(e) => return Ok(Err(e)),
        };
        let len: usize = body.iter().map(Bytes::len).sum();
        if len > 0 {
            peek = match parse_peek(&body, len) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
        }
        plan = if len > RETRY_BUFFER_LIMIT { BodyPlan::Pipe(body) } else { BodyPlan::Replay(body) };
    }
    if let Some(model) = &peek.model {
        if !key.models.allows(model) {
            return Ok(Err(GatewayError::ModelNotAllowed(model.clone())));
        }
    }
    let provider = match (&route.target, &peek.model) {
        (Target::Provider(i), _) => rt.providers.get(*i).cloned(),
        (Target::ByModel, Some(model)) => match rt.provider_for_model(model) {
            Some(p) => Some(p.clone()),
            None => return Ok(Err(GatewayError::ModelNotFound(model.clone()))),
        },
        // No model in the request (GET /v1/models, …): the first provider answers.
        (Target::ByModel, None) => rt.providers.first().cloned(),
    };
    let Some(provider) = provider else {
        return Ok(Err(GatewayError::Unavailable("no provider is configured for this route".into())));
    };
    let stripped = match route.strip_for(&provider.base_path) {
        Some(prefix) => path.strip_prefix(prefix).unwrap_or(&path).to_string(),
        None => path.clone(),
    };
    let mut upstream_path = provider.upstream_path(&stripped);
    if let Some(q) = session.req_header().uri.query() {
        upstream_path.push('?');
        upstream_path.push_str(q);
    }
    let streams = super::streams::RouteStreams::new(route, &provider);
    let routed = Routed {
        runtime: rt.clone(),
        request_id: meta.request_id,
        started: meta.started,
        key,
        route_label,
        provider,
        upstream_path,
        model: peek.model,
        stream: peek.stream.unwrap_or(false),
        client_ip: meta.client_ip,
        client_proto: meta.client_proto,
        streams,
    };
    Ok(Ok(Decision { routed, body: plan }))
}

/// POST/PUT/PATCH bodies are read as JSON, except uploads (`multipart/*`, octet streams), which
/// stream through untouched. (`curl -d` labels JSON as form data, so that counts as JSON.)
fn wants_json_read(session: &Session) -> bool {
    let req = session.req_header();
    if !matches!(req.method, http::Method::POST | http::Method::PUT | http::Method::PATCH) {
        return false;
    }
    match req.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            !(ct.starts_with("multipart/") || ct.starts_with("application/octet-stream"))
        }
    }
}

/// Reads the whole body, refusing more than `max` bytes (by Content-Length before reading).
async fn read_body(session: &mut Session, max: u64) -> Result<Result<Vec<Bytes>, GatewayError>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(Err(GatewayError::PayloadTooLarge(max)));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    session.enable_retry_buffering();
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len() as u64;
        if total > max {
            return Ok(Err(GatewayError::PayloadTooLarge(max)));
        }
        chunks.push(chunk);
    }
    Ok(Ok(chunks))
}

fn parse_peek(chunks: &[Bytes], len: usize) -> Result<Peek, GatewayError> {
    let parsed = if chunks.len() == 1 {
        serde_json::from_slice::<Peek>(&chunks[0])
    } else {
        let mut all = Vec::with_capacity(len);
        for c in chunks {
            all.extend_from_slice(c);
        }
        serde_json::from_slice::<Peek>(&all)
    };
    parsed.map_err(|e| GatewayError::InvalidJson(e.to_string()))
}

/// The path for an error message: bounded, printable, no query (it may hold a key).
fn safe_path(path: &str) -> String {
    path.chars().filter(|c| c.is_ascii_graphic()).take(200).collect()
}
