//! Route: make the path canonical and match it, learn the model ([`model`]: body, query,
//! `/models/{id}`, defaults), check the key may use it, pick the provider, and decide how the
//! body reaches the upstream.

use super::ctx::Routed;
use super::fields::{is_upgrade_req, Present};
use super::model;
use crate::error::GatewayError;
use crate::fleet::hash_key::{key_for, KeyInputs};
use crate::keys::KeyEntry;
use crate::request_body::Scan;
use crate::routes::{Route, Target};
use crate::runtime::Runtime;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// How the request body reaches the upstream.
pub enum BodyPlan {
    /// Not read (no body, or not JSON): Pingora streams it.
    Untouched,
    /// Read whole (up to `server.max_body`): Pingora replays it from its retry buffer, sized
    /// to `server.max_body` (`model::read_body`); the bytes are kept for the heartbeat relay,
    /// which replays them itself.
    Replay(Bytes),
}

/// What [`decide`] decided besides the [`Routed`] it writes into the request's context.
pub struct Decision {
    pub body: BodyPlan,
    /// `GET …/models`: the list is fetched whole and filtered (see `models_list`).
    pub models_list: bool,
}

pub struct RequestMeta {
    pub request_id: String,
    pub started: Instant,
    pub client_ip: Option<String>,
    pub client_proto: &'static str,
    /// The client's fields admission reads, as found when the request arrived.
    pub present: super::fields::Present,
}

pub async fn decide(
    session: &mut Session,
    rt: &Arc<Runtime>,
    key: Arc<KeyEntry>,
    meta: RequestMeta,
    slot: &mut Option<Routed>,
) -> Result<Result<Decision, GatewayError>> {
    // The one canonical path: matched here and forwarded as is.
    let path = match crate::http_path::normalise(session.req_header().uri.path()) {
        Ok(p) => p,
        Err(e) => return Ok(Err(GatewayError::BadRequest(format!("cannot route this path: {e}")))),
    };
    let Some((route_index, route)) = rt.routes.find_indexed(&path) else {
        return Ok(Err(GatewayError::NotFound(safe_path(&path))));
    };
    let route_label = route.label.clone();
    let fixed = match route.target {
        Target::Provider(i) => rt.providers.get(i).cloned(),
        Target::ByModel => None,
    };
    let learned = match learn(session, rt, route, fixed.as_ref(), &key, &path, &meta.present).await? {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let Learned { scan, form, chunks, listing, model, defaulted } = learned;
    // The body stays at hand (a cheap clone) for the prefix fingerprint, computed only if used.
    let chunks_ref = chunks.clone();
    let provider = match (fixed, &model) {
        (Some(p), _) => Some(p),
        (None, Some(m)) => match rt.provider_for_model(m) {
            Some(p) => Some(p.clone()),
            None => return Ok(Err(GatewayError::ModelNotFound(m.clone()))),
        },
        // No model in the request (GET /v1/models, …): the first provider answers.
        (None, None) => rt.providers.first().cloned(),
    };
    let Some(provider) = provider else {
        return Ok(Err(GatewayError::Unavailable("no provider is configured for this route".into())));
    };
    // Every backend down or open: a fallback, or 503 at once rather than waiting on timeouts.
    let Some(provider) = rt.serving(&provider) else {
        return Ok(Err(GatewayError::Unavailable(format!("every backend of provider {:?} is down", provider.name))));
    };
    // The Responses API has no `include_usage` (usage comes in `response.completed`): only
    // completions get it added.
    let responses_api = path.as_bytes().split(|&c| c == b'/').any(|seg| seg == b"responses");
    let add_usage = scan.stream == Some(true) && scan.include_usage != Some(true) && !responses_api;
    let (plan, body_len, new_body, strip_usage) = match chunks {
        None => (BodyPlan::Untouched, None, None, false),
        Some(body) => body_plan(body, &form, &scan, defaulted.as_deref(), add_usage),
    };
    let hash_key = hash_key(session, &provider, &key, &scan, chunks_ref.as_ref(), meta.client_ip.as_deref());
    let inference = super::inference::ticket(&provider, &scan, chunks_ref.as_ref(), model.as_deref());
    let upstream_path =
        upstream_target(session, route.upstream_path(&provider.base_path, &path), defaulted.as_deref(), &meta.present);
    let streams = super::long_lived::RouteStreams::new(route, &provider);
    let provider_index = rt.providers.iter().position(|p| Arc::ptr_eq(p, &provider)).unwrap_or(usize::MAX);
    // A fleet's list is merged from its replicas even for a key that may use every model.
    let models_list = matches!(listing, Listing::All)
        && session.req_header().method == http::Method::GET
        && (!key.models.allows_all() || provider.backends.len() > 1);
    // Written in place (set only when the route is decided): the context keeps it, and a
    // `Routed` returned would be copied at each step out (decide, its caller, the context).
    *slot = Some(Routed {
        runtime: rt.clone(),
        request_id: meta.request_id,
        started: meta.started,
        key,
        route_label,
        provider,
        route_index,
        provider_index,
        hash_key,
        upstream_path,
        model,
        stream: scan.stream.unwrap_or(false),
        client_ip: meta.client_ip,
        client_proto: meta.client_proto,
        strip_usage,
        body_len,
        new_body,
        streams,
        inference,
    });
    Ok(Ok(Decision { body: plan, models_list }))
}

/// What [`learn`] found: the scanned body and the model the request is for.
struct Learned {
    scan: Scan,
    form: model::Form,
    /// The body, when the gateway read it (joined into one buffer).
    chunks: Option<Bytes>,
    listing: Listing,
    /// The model checked and charged (named, or the default).
    model: Option<String>,
    /// The default model the gateway must write into the request.
    defaulted: Option<String>,
}

/// Reads and scans the body where the model may be in it, finds every model the request
/// names (body, query, `/models/{id}`), falls back to the default, and checks the key.
async fn learn(
    session: &mut Session,
    rt: &Runtime,
    route: &Route,
    fixed: Option<&Arc<crate::fleet::Provider>>,
    key: &KeyEntry,
    path: &str,
    present: &Present,
) -> Result<Result<Learned, GatewayError>> {
    // MCP bodies are JSON-RPC for the backend only (batches are arrays): never parsed here.
    let mcp = route.opts.kind == crate::routes::RouteKind::Mcp;
    let needs = route.target == Target::ByModel || !key.models.allows_all();
    let (mut scan, mut form, mut chunks) = (Scan::default(), model::Form::Opaque, None);
    if !mcp && model::reads_body(session, present) && (needs || !model::is_upload(session.req_header())) {
        let body = match model::read_body(session, rt.server.max_body, present).await? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        (scan, form) = match model::scan_body(session.req_header(), &body, needs, present) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        chunks = Some(body);
    }
    let listing = if mcp { Listing::None } else { listing(route, path) };
    let query = if mcp { Ok(None) } else { model::query_model(session.req_header()) };
    let named = match query.and_then(|q| model::named(&[scan.model.as_deref(), q.as_deref(), listing.id()])) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    // A model the request did not name: the route's default, else its provider's.
    let mut defaulted = None;
    let model = match named {
        Some(m) => Some(m),
        None if mcp || chunks.is_none() && !is_upgrade_req(session, present) => None,
        None => {
            let provider = fixed.or(rt.providers.first());
            let default = route.default_model.as_deref().or(provider.and_then(|p| p.default_model.as_deref()));
            match model::fallback(key, default) {
                Ok(m) => {
                    defaulted = m.clone();
                    m
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    };
    if let Some(m) = model.as_ref().filter(|m| !key.models.allows(m)) {
        // A model id in the path does not exist for this key.
        return Ok(Err(match listing {
            Listing::One(_) => GatewayError::ModelNotFound(m.clone()),
            _ => GatewayError::ModelNotAllowed(m.clone()),
        }));
    }
    Ok(Ok(Learned { scan, form, chunks, listing, model, defaulted }))
}

/// The path and query sent upstream; an upgrade's default model is written into its query.
fn upstream_target(session: &Session, mut target: String, defaulted: Option<&str>, present: &Present) -> String {
    let query = session.req_header().uri.query().map(str::to_string);
    let query = match (query, defaulted.filter(|_| is_upgrade_req(session, present))) {
        (q, Some(m)) => Some(with_query_model(q.as_deref(), m)),
        (q, None) => q,
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(&q);
    }
    target
}

/// How the read body reaches the upstream, rewritten when a default model or
/// `include_usage` is added: (plan, new length, new body for the retry buffer, strip usage).
fn body_plan(
    body: Bytes,
    form: &model::Form,
    scan: &Scan,
    set_model: Option<&str>,
    add_usage: bool,
) -> (BodyPlan, Option<usize>, Option<Bytes>, bool) {
    let add_usage = add_usage && *form == model::Form::Json;
    match model::rewritten(&body, form, scan, set_model, add_usage) {
        // Pingora replays the retry buffer (sized to `server.max_body`) through
        // `request_body_filter`, which swaps in the new body.
        Some(new) => (BodyPlan::Replay(new.clone()), Some(new.len()), Some(new), add_usage),
        None => (BodyPlan::Replay(body), None, None, false),
    }
}

/// The bytes the provider's ring is walked from (ketama only: the other policies do not hash).
/// The prefix fingerprint is hashed only when the walk over `hash_key` reaches it.
fn hash_key(
    session: &Session,
    provider: &crate::fleet::Provider,
    key: &KeyEntry,
    scan: &Scan,
    body: Option<&Bytes>,
    client_ip: Option<&str>,
) -> Vec<u8> {
    if provider.fleet.balance != crate::fleet::select::Balance::Ketama {
        return Vec::new();
    }
    let prefix = || body.and_then(|b| scan.prefix(b));
    let inputs = KeyInputs {
        headers: &session.req_header().headers,
        key_name: &key.name,
        user: scan.user.as_deref(),
        prefix: &prefix,
        client_ip,
        model: scan.model.as_deref(),
    };
    // No source present: a random key spreads such requests like round robin would.
    key_for(&provider.fleet.hash_key, &inputs).unwrap_or_else(|| rand::random::<u64>().to_le_bytes().to_vec())
}

fn with_query_model(query: Option<&str>, model: &str) -> String {
    let pair: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("model", model).finish();
    match query {
        Some(q) if !q.is_empty() => format!("{q}&{pair}"),
        _ => pair,
    }
}

/// A path into the provider's model list.
#[derive(Debug, PartialEq, Eq)]
enum Listing {
    None,
    /// `…/models` (or `…/models/`): the list.
    All,
    /// `…/models/{id}`, the id decoded as the upstream's router would.
    One(String),
}

impl Listing {
    fn id(&self) -> Option<&str> {
        match self {
            Listing::One(id) => Some(id),
            _ => None,
        }
    }
}

/// Reads the canonical path below the route's own prefix: the first `models` segment
/// makes it a model list path; what follows it is a model id (ids may hold `/`).
fn listing(route: &crate::routes::Route, path: &str) -> Listing {
    let prefix = route.strip_prefix.as_deref().map(|p| p.trim_end_matches('/')).unwrap_or("");
    let rel = path.strip_prefix(prefix).unwrap_or(path);
    let Some(id) = after_models_segment(rel) else { return Listing::None };
    let id = id.trim_end_matches('/');
    if id.is_empty() {
        return Listing::All;
    }
    // Not UTF-8 once decoded: no model the key's globs could allow.
    Listing::One(crate::http_path::decode(id).unwrap_or_else(|| "\u{fffd}".to_string()))
}

/// What follows the first segment that is `models` (`models;x` too: servers that read `;` as
/// a path parameter, Java's, route it as `models`), `None` when no segment is. This runs on
/// every request: one pass testing each byte for an `m` that opens a segment (a third of
/// the instructions of splitting the path into segments and comparing each).
fn after_models_segment(rel: &str) -> Option<&str> {
    let b = rel.as_bytes();
    let opens_models = |i: usize| {
        let rest = &b[i..];
        (i == 0 || b[i - 1] == b'/') && rest.starts_with(b"models") && matches!(rest.get(6), None | Some(b'/' | b';'))
    };
    let start = (0..b.len()).find(|&i| b[i] == b'm' && opens_models(i))?;
    let end = b[start..].iter().position(|&c| c == b'/').map_or(b.len(), |i| start + i);
    Some(rel.get(end + 1..).unwrap_or(""))
}

/// The path for an error message: bounded, printable, no query (it may hold a key).
fn safe_path(path: &str) -> String {
    path.chars().filter(|c| c.is_ascii_graphic()).take(200).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The segment walk [`after_models_segment`] replaced: split at each `/`, cut each
    /// segment at `;`, compare with `models`.
    fn after_models_walk(rel: &str) -> Option<&str> {
        let mut start = 0;
        loop {
            let end = rel.as_bytes()[start..].iter().position(|&c| c == b'/').map_or(rel.len(), |i| start + i);
            let segment = &rel.as_bytes()[start..end];
            let name = segment.iter().position(|&c| c == b';').map_or(segment, |i| &segment[..i]);
            if name == b"models" {
                return Some(rel.get(end + 1..).unwrap_or(""));
            }
            if end == rel.len() {
                return None;
            }
            start = end + 1;
        }
    }

    #[test]
    fn the_models_scan_agrees_with_the_segment_walk() {
        let parts = ["/", "models", "models;x", ";", "m", "mo", "modelsx", "xmodels", "model", "a", "/models/"];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = paths.iter().flat_map(|p| parts.iter().map(move |q| format!("{p}{q}"))).collect();
            paths.extend(longer);
        }
        for p in &paths {
            assert_eq!(after_models_segment(p), after_models_walk(p), "{p:?}");
        }
    }

    #[test]
    fn model_list_paths() {
        let r = Route::new("/v1/*", Target::ByModel, None).unwrap();
        assert_eq!(listing(&r, "/v1/models"), Listing::All);
        assert_eq!(listing(&r, "/v1/models/"), Listing::All);
        assert_eq!(listing(&r, "/v1/models/a"), Listing::One("a".into()));
        assert_eq!(listing(&r, "/v1/models/org/m%3A1"), Listing::One("org/m:1".into()));
        assert_eq!(listing(&r, "/v1/modelsx"), Listing::None);
        assert_eq!(listing(&r, "/v1/models-x/models"), Listing::All);
        assert_eq!(listing(&r, "/v1/models;jsessionid=1"), Listing::All);
        assert_eq!(listing(&r, "/v1/chat/completions"), Listing::None);
        assert_eq!(listing(&r, "/v1/models//a//"), Listing::One("/a".into()));
        assert_eq!(listing(&r, "/v1/x/models;v=1/b/c"), Listing::One("b/c".into()));
        assert_eq!(listing(&r, "models"), Listing::All);
        assert_eq!(listing(&r, ""), Listing::None);
        let s = Route::new("/api/*", Target::ByModel, Some("/api".into())).unwrap();
        assert_eq!(listing(&s, "/api/models"), Listing::All);
    }
}
