//! `POST …/chat/completions` and `POST …/completions`: overrides, failure injection, the
//! prefix-cache lookup, then a streamed or a whole answer.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::openai::{self, Answer, CompletionRequest, Kind, Usage};
use super::prefix_cache::tokens_for_chars;
use super::replica::{Replica, Running};
use super::response::{self, Body};
use super::stream::{self, Pace};

/// Largest request body read, in bytes (64 MiB).
const MAX_BODY: usize = 64 << 20;

pub const X_PREFIX_HIT_TOKENS: HeaderName = HeaderName::from_static("x-sim-prefix-hit-tokens");

/// A failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// 500 with an OpenAI error body.
    Error,
    /// Cut the connection half way through the body.
    Close,
    /// Never answer.
    Hang,
}

/// Per-request overrides from `x-sim-*` headers.
#[derive(Default)]
struct Overrides {
    tokens: Option<u32>,
    ttft: Option<Duration>,
    itl: Option<Duration>,
    fail: Option<Fail>,
}

impl Overrides {
    fn from_headers(h: &HeaderMap) -> Result<Self, String> {
        let ms = |name: &str| -> Result<Option<Duration>, String> { Ok(number(h, name)?.map(Duration::from_millis)) };
        let fail = match h.get("x-sim-fail").map(HeaderValue::as_bytes) {
            None => None,
            Some(b"error") => Some(Fail::Error),
            Some(b"close") => Some(Fail::Close),
            Some(b"hang") => Some(Fail::Hang),
            Some(_) => return Err("x-sim-fail: expected error, close or hang".into()),
        };
        Ok(Overrides {
            tokens: number(h, "x-sim-tokens")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            ttft: ms("x-sim-ttft-ms")?,
            itl: ms("x-sim-itl-ms")?,
            fail,
        })
    }
}

/// A non-negative integer header, or a message naming it.
pub fn number(h: &HeaderMap, name: &str) -> Result<Option<u64>, String> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("{name}: expected a non-negative integer"))
        })
        .transpose()
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

pub async fn handle(r: &Replica, kind: Kind, req: Request<Incoming>) -> Response<Body> {
    // With the replica model on, its scheduler sets the running gauge itself.
    let running = r.engine.is_none().then(|| Running::new(&r.metrics.running));
    let (parts, body) = req.into_parts();
    let ov = match Overrides::from_headers(&parts.headers) {
        Ok(ov) => ov,
        Err(msg) => return response::bad_request(&msg),
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return response::bad_request(&format!("cannot read the body: {e}")),
    };
    let cfg = &r.cfg;
    if ov.fail == Some(Fail::Hang) || (ov.fail.is_none() && roll(cfg.hang_rate)) {
        return std::future::pending().await;
    }
    if ov.fail == Some(Fail::Error) || (ov.fail.is_none() && roll(cfg.error_rate)) {
        return response::status_error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure");
    }
    let req = match openai::parse(kind, &body) {
        Ok(req) => req,
        Err(msg) => return response::bad_request(&msg),
    };
    let model = match &req.model {
        None => cfg.models.first().cloned().unwrap_or_default(),
        Some(m) if cfg.models.contains(m) || r.lora.serves(m) => m.clone(),
        Some(m) => {
            return response::error(
                StatusCode::NOT_FOUND,
                &format!("The model `{m}` does not exist."),
                "invalid_request_error",
                "model_not_found",
            )
        }
    };
    // An adapter not loaded costs its load before the first token; held as long as the answer.
    let running = (running, r.lora.acquire(&model).await);
    // The first token's time counts from here, not from when the answer's header is written.
    let read_at = tokio::time::Instant::now();
    let close = ov.fail == Some(Fail::Close) || (ov.fail.is_none() && roll(cfg.close_rate));
    let (answer, hit_tokens) = answer(r, kind, &req, model, ov.tokens);
    let ttft = ov.ttft.unwrap_or(cfg.ttft);
    let itl = ov.itl.unwrap_or(cfg.itl);
    let mut seq = r.engine.as_ref().map(|e| e.submit(answer.usage.prompt_tokens - hit_tokens, answer.tokens));
    let mut resp = if req.stream {
        let pace = Pace {
            start: read_at,
            ttft,
            itl,
            cut_after: close.then_some(answer.tokens / 2),
            include_usage: req.include_usage,
            eol: cfg.line_ending.as_str(),
            engine: seq,
        };
        let body = stream::body(answer, pace, r.metrics.generation_tokens.clone(), running);
        let mut resp = response::with_body(StatusCode::OK, HeaderValue::from_static("text/event-stream"), body);
        resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    } else {
        // A whole answer takes as long as its stream would have.
        let total = ttft + itl * answer.tokens.saturating_sub(1);
        if let Some(seq) = seq.as_mut() {
            for _ in 0..answer.tokens {
                seq.token().await;
            }
        } else if !total.is_zero() {
            tokio::time::sleep(total).await;
        }
        r.metrics.generation_tokens.inc_by(u64::from(answer.tokens));
        let bytes = answer.full_body();
        let body = if close { stream::cut_body(bytes) } else { response::full(bytes) };
        drop(running);
        response::with_body(StatusCode::OK, response::JSON, body)
    };
    resp.headers_mut().insert(X_PREFIX_HIT_TOKENS, HeaderValue::from(hit_tokens));
    resp
}

/// Sizes the answer and consults the prefix cache; returns it with the cached prompt tokens.
fn answer(r: &Replica, kind: Kind, req: &CompletionRequest, model: String, tokens: Option<u32>) -> (Answer, u64) {
    let natural = tokens.unwrap_or(r.cfg.tokens);
    let (tokens, finish) = match req.max_tokens {
        Some(max) if max < natural => (max, "length"),
        _ => (natural, "stop"),
    };
    let prompt_tokens = tokens_for_chars(req.prompt.len());
    let mut hit = 0;
    if !req.prompt.is_empty() && r.cfg.prefix_cache_blocks > 0 {
        let found = r.cache.lookup_and_insert(req.prompt.as_bytes());
        hit = r.cache.hit_tokens(found).min(prompt_tokens);
        r.metrics.prefix_queries.inc_by(prompt_tokens);
        r.metrics.prefix_hits.inc_by(hit);
    }
    r.metrics.prompt_tokens.inc_by(prompt_tokens);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    let created = super::surface::now();
    let answer = Answer {
        kind,
        id: r.next_id(prefix),
        created,
        model,
        tokens,
        finish,
        usage: Usage::new(prompt_tokens, u64::from(tokens), hit),
    };
    (answer, hit)
}
