//! vLLM's Responses API: `POST …/v1/responses` (streamed or not), `GET …/v1/responses/{id}`,
//! `POST …/v1/responses/{id}/cancel`. Like vLLM, a replica keeps the responses it produced
//! (`store`, default true) in its own memory: another replica answers 404 for their ids, and a
//! `previous_response_id` it does not hold is 404 — which is what makes affinity necessary
//! behind a fleet. Cancelling a finished response is 400, as in vLLM.
//!
//! Streamed events: `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, one `response.output_text.delta` per token (after `ttft`,
//! then every `itl`), the matching `.done` events, `response.completed`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use super::prefix_cache::tokens_for_chars;
use super::replica::Replica;
use super::response::{self, Body};
use super::surface::{now, served_model};

/// Responses kept per replica; the oldest go first.
const MAX_STORED: usize = 10_000;
const MAX_BODY: usize = 64 << 20;

/// One stored response and the length of the conversation it ends (for the next prompt).
struct Stored {
    response: Value,
    context_chars: usize,
}

#[derive(Default)]
pub struct Store {
    inner: Mutex<(HashMap<String, Stored>, VecDeque<String>)>,
}

impl Store {
    fn put(&self, id: String, stored: Stored) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (map, order) = &mut *g;
        if map.insert(id.clone(), stored).is_none() {
            order.push_back(id);
        }
        while order.len() > MAX_STORED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn get(&self, id: &str) -> Option<(Value, usize)> {
        let g = self.inner.lock().ok()?;
        g.0.get(id).map(|s| (s.response.clone(), s.context_chars))
    }
}

/// `/v1/responses` and below; `rest` is what follows `/responses` in the path.
pub async fn handle(r: &Replica, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let method = req.method().clone();
    let id = rest.trim_start_matches('/');
    match (method, id.split_once('/')) {
        (Method::POST, None) if id.is_empty() => create(r, req).await,
        (Method::GET, None) if !id.is_empty() => match r.responses.get(id) {
            Some((v, _)) => response::json(StatusCode::OK, v.to_string()),
            None => not_found(id),
        },
        (Method::POST, Some((id, "cancel"))) => match r.responses.get(id) {
            Some(_) => response::bad_request("Cannot cancel a synchronous response."),
            None => not_found(id),
        },
        _ => {
            response::error(StatusCode::NOT_FOUND, "no such Responses API route", "invalid_request_error", "not_found")
        }
    }
}

fn not_found(id: &str) -> Response<Body> {
    let message = format!("Response with id '{}' not found.", id.chars().take(200).collect::<String>());
    response::error(StatusCode::NOT_FOUND, &message, "invalid_request_error", "response_not_found")
}

async fn create(r: &Replica, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return response::bad_request(&format!("cannot read the body: {e}")),
    };
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return response::bad_request("the body must be a JSON object"),
    };
    // The Responses API reports usage in `response.completed` and has no `include_usage`;
    // OpenAI's API refuses the parameter, so the sim does too (a gateway must not add it).
    if doc.get("stream_options").and_then(|o| o.get("include_usage")).is_some() {
        return response::bad_request("Unknown parameter: 'stream_options.include_usage'.");
    }
    let model = match served_model(r, doc.get("model").and_then(Value::as_str)) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let previous = doc.get("previous_response_id").and_then(Value::as_str);
    let earlier = match previous {
        Some(p) => match r.responses.get(p) {
            Some((_, chars)) => chars,
            None => return not_found(p),
        },
        None => 0,
    };
    let mut input = String::new();
    push_text(&mut input, doc.get("instructions"));
    push_text(&mut input, doc.get("input"));
    let want = doc.get("max_output_tokens").and_then(Value::as_u64).map(|m| m.min(u64::from(r.cfg.tokens)));
    let tokens = u32::try_from(want.unwrap_or(u64::from(r.cfg.tokens))).unwrap_or(r.cfg.tokens);
    let mut text = String::new();
    for i in 1..=tokens {
        super::openai::push_token(&mut text, i);
    }
    let prompt_tokens = tokens_for_chars(earlier + input.len());
    r.metrics.prompt_tokens.inc_by(prompt_tokens);
    r.metrics.generation_tokens.inc_by(u64::from(tokens));
    let id = r.next_id("resp").replacen('-', "_", 1);
    let msg_id = r.next_id("msg").replacen('-', "_", 1);
    let store = doc.get("store").and_then(Value::as_bool).unwrap_or(true);
    let done = body_of(&id, &msg_id, &model, previous, &text, prompt_tokens, tokens, store);
    if store {
        r.responses
            .put(id.clone(), Stored { response: done.clone(), context_chars: earlier + input.len() + text.len() });
    }
    if doc.get("stream").and_then(Value::as_bool) == Some(true) {
        let events = events(done, &msg_id, tokens, r.cfg.ttft, r.cfg.itl);
        let mut resp = response::with_body(StatusCode::OK, HeaderValue::from_static("text/event-stream"), events);
        resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    let total = r.cfg.ttft + r.cfg.itl * tokens.saturating_sub(1);
    if !total.is_zero() {
        tokio::time::sleep(total).await;
    }
    response::json(StatusCode::OK, done.to_string())
}

/// The text of `input` / `instructions`: a string, or message items whose content is a string
/// or parts with `text`.
fn push_text(out: &mut String, v: Option<&Value>) {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(items)) => items.iter().for_each(|i| push_text(out, Some(i))),
        Some(Value::Object(o)) => {
            push_text(out, o.get("text"));
            push_text(out, o.get("content"));
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn body_of(
    id: &str,
    msg_id: &str,
    model: &str,
    previous: Option<&str>,
    text: &str,
    input: u64,
    output: u32,
    store: bool,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": now(), "model": model, "status": "completed",
        "output": [message(msg_id, text, "completed")],
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "previous_response_id": previous,
        "error": null, "incomplete_details": null, "instructions": null, "metadata": null,
        "temperature": 1.0, "top_p": 1.0, "max_output_tokens": null, "text": {"format": {"type": "text"}},
        "truncation": "disabled", "background": false, "store": store,
        "usage": {
            "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + u64::from(output),
        },
    })
}

fn message(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" { json!([part(text)]) } else { json!([]) };
    json!({"type": "message", "id": id, "role": "assistant", "status": status, "content": content})
}

fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": null})
}

/// The SSE body of a streamed response whose final state is `done`.
fn events(done: Value, msg_id: &str, tokens: u32, ttft: Duration, itl: Duration) -> Body {
    let mut start = done.clone();
    start["status"] = json!("in_progress");
    start["output"] = json!([]);
    start["usage"] = Value::Null;
    let text = done["output"][0]["content"][0]["text"].as_str().unwrap_or("").to_string();
    let item = |i: u64| json!({"item_id": msg_id, "output_index": 0, "content_index": i});
    let mut list: Vec<(Duration, &str, Value)> = vec![
        (Duration::ZERO, "response.created", json!({"response": start.clone()})),
        (Duration::ZERO, "response.in_progress", json!({"response": start})),
        (
            Duration::ZERO,
            "response.output_item.added",
            json!({"output_index": 0, "item": message(msg_id, "", "in_progress")}),
        ),
        (Duration::ZERO, "response.content_part.added", merge(item(0), json!({"part": part("")}))),
    ];
    let mut piece = String::new();
    for i in 1..=tokens {
        piece.clear();
        super::openai::push_token(&mut piece, i);
        let wait = if i == 1 { ttft } else { itl };
        list.push((wait, "response.output_text.delta", merge(item(0), json!({"delta": piece, "logprobs": []}))));
    }
    list.push((Duration::ZERO, "response.output_text.done", merge(item(0), json!({"text": text, "logprobs": []}))));
    list.push((Duration::ZERO, "response.content_part.done", merge(item(0), json!({"part": part(&text)}))));
    let item_done = done["output"][0].clone();
    list.push((Duration::ZERO, "response.output_item.done", json!({"output_index": 0, "item": item_done})));
    list.push((Duration::ZERO, "response.completed", json!({"response": done})));
    // One schedule from now (the request was read), as in `stream`: each wait is after the
    // previous event was due, not after it was written.
    let mut due = tokio::time::Instant::now();
    let frames: Vec<(tokio::time::Instant, Bytes)> = list
        .into_iter()
        .enumerate()
        .map(|(seq, (wait, name, mut v))| {
            v["type"] = json!(name);
            v["sequence_number"] = json!(seq);
            due += wait;
            (due, Bytes::from(format!("event: {name}\ndata: {v}\n\n")))
        })
        .collect();
    let s = stream::iter(frames).then(|(due, bytes)| async move {
        super::stream::sleep_until(due).await;
        Ok::<_, io::Error>(Frame::data(bytes))
    });
    StreamBody::new(s.boxed()).boxed_unsync()
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}
