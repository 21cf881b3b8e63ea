//! The rest of vLLM's OpenAI server besides completions, with vLLM's request and answer
//! shapes: `/v1/embeddings`, `/v1/rerank` (also `/rerank`, `/v2/rerank`), `/v1/score` (also
//! `/score`), `/tokenize`, `/detokenize`, `/v1/audio/transcriptions` and `/translations`
//! (multipart). Token counts follow the sim's rule (ceil(bytes / 4), see [`super::openai`]);
//! embeddings and scores are deterministic functions of the input text.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::prefix_cache::tokens_for_chars;
use super::replica::Replica;
use super::response::{self, Body};
use super::route::Endpoint;

/// Largest request body read, in bytes (64 MiB, as for completions).
const MAX_BODY: usize = 64 << 20;
/// Dimensions of an embedding unless the request asks for `dimensions`.
const DIMENSIONS: usize = 8;
/// `max_model_len` reported by `/tokenize`.
const MAX_MODEL_LEN: u64 = 8192;

pub async fn handle(r: &Replica, endpoint: Endpoint, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return response::bad_request(&format!("cannot read the body: {e}")),
    };
    if endpoint == Endpoint::Audio {
        let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        return audio(r, ct, &body);
    }
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return response::bad_request("the body must be a JSON object"),
    };
    let model = match served_model(r, doc.get("model").and_then(Value::as_str)) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let answer = match endpoint {
        Endpoint::Embeddings => embeddings(r, &model, &doc),
        Endpoint::Rerank => rerank(r, &model, &doc),
        Endpoint::Score => score(r, &model, &doc),
        Endpoint::Tokenize => tokenize(&doc),
        Endpoint::Detokenize => detokenize(&doc),
        _ => Err("not a surface endpoint".into()),
    };
    match answer {
        Ok(v) => response::json(StatusCode::OK, v.to_string()),
        Err(msg) => response::bad_request(&msg),
    }
}

/// The model a request is for: the first served one when it names none, 404 for an unknown one.
pub fn served_model(r: &Replica, named: Option<&str>) -> Result<String, Box<Response<Body>>> {
    match named.filter(|m| !m.is_empty()) {
        None => Ok(r.cfg.models.first().cloned().unwrap_or_default()),
        Some(m) if r.cfg.models.iter().any(|s| s == m) => Ok(m.to_string()),
        Some(m) => Err(Box::new(response::error(
            StatusCode::NOT_FOUND,
            &format!("The model `{m}` does not exist."),
            "NotFoundError",
            "model_not_found",
        ))),
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Texts of an input that is a string, a list of strings, or token ids (as their decimals).
fn texts(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            Ok(vec![items.iter().map(|n| format!("{n} ")).collect()])
        }
        Some(Value::Array(items)) => items.iter().map(|i| texts(Some(i)).map(|t| t.concat())).collect(),
        Some(Value::Object(o)) => texts(o.get("text")),
        _ => Err("expected a string, a list of strings or token ids".into()),
    }
}

/// A deterministic value in [0, 1) for a text (and a salt).
fn unit(text: &str, salt: u64) -> f64 {
    let d = Sha256::new().chain_update(salt.to_le_bytes()).chain_update(text.as_bytes()).finalize();
    let n = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n >> 11) as f64 / (1u64 << 53) as f64
}

fn embeddings(r: &Replica, model: &str, doc: &Value) -> Result<Value, String> {
    let inputs = texts(doc.get("input")).map_err(|e| format!("`input`: {e}"))?;
    let dims = doc.get("dimensions").and_then(Value::as_u64).map_or(DIMENSIONS, |d| d.clamp(1, 4096) as usize);
    let base64 = doc.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut prompt = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            prompt += tokens_for_chars(text.len());
            let v: Vec<f32> = (0..dims).map(|d| unit(text, d as u64) as f32 * 2.0 - 1.0).collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"index": i, "object": "embedding", "embedding": embedding})
        })
        .collect();
    r.metrics.prompt_tokens.inc_by(prompt);
    Ok(json!({
        "id": r.next_id("embd"), "object": "list", "created": now(), "model": model, "data": data,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0, "prompt_tokens_details": null},
    }))
}

fn rerank(r: &Replica, model: &str, doc: &Value) -> Result<Value, String> {
    let query = doc.get("query").and_then(Value::as_str).ok_or("`query` is required")?;
    let documents = texts(doc.get("documents")).map_err(|e| format!("`documents`: {e}"))?;
    let mut results: Vec<(usize, f64)> =
        documents.iter().map(|d| unit(&format!("{query}\n{d}"), 0)).enumerate().collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = doc.get("top_n").and_then(Value::as_u64).filter(|n| *n > 0).map_or(results.len(), |n| n as usize);
    let tokens: u64 = documents.iter().map(|d| tokens_for_chars(query.len() + d.len())).sum();
    r.metrics.prompt_tokens.inc_by(tokens);
    let results: Vec<Value> = results
        .into_iter()
        .take(top)
        .map(|(i, s)| json!({"index": i, "document": {"text": documents[i]}, "relevance_score": s}))
        .collect();
    Ok(json!({"id": r.next_id("rerank"), "model": model, "usage": {"total_tokens": tokens}, "results": results}))
}

fn score(r: &Replica, model: &str, doc: &Value) -> Result<Value, String> {
    let left = texts(doc.get("text_1").or(doc.get("queries"))).map_err(|e| format!("`text_1`: {e}"))?;
    let right = texts(doc.get("text_2").or(doc.get("documents"))).map_err(|e| format!("`text_2`: {e}"))?;
    if left.len() != 1 && left.len() != right.len() {
        return Err("`text_1` must be one text or as many as `text_2`".into());
    }
    let mut tokens = 0;
    let data: Vec<Value> = right
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let a = &left[if left.len() == 1 { 0 } else { i }];
            tokens += tokens_for_chars(a.len() + b.len());
            json!({"index": i, "object": "score", "score": unit(&format!("{a}\n{b}"), 0)})
        })
        .collect();
    r.metrics.prompt_tokens.inc_by(tokens);
    Ok(json!({
        "id": r.next_id("score"), "object": "list", "created": now(), "model": model, "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }))
}

fn tokenize(doc: &Value) -> Result<Value, String> {
    let text = match (doc.get("prompt"), doc.get("messages")) {
        (Some(p), _) => texts(Some(p)).map_err(|e| format!("`prompt`: {e}"))?.concat(),
        (None, Some(Value::Array(msgs))) => {
            msgs.iter().map(|m| m.get("content").and_then(Value::as_str).unwrap_or("")).collect::<String>()
        }
        _ => return Err("`prompt` or `messages` is required".into()),
    };
    let count = tokens_for_chars(text.len());
    let tokens: Vec<u64> = (1..=count).collect();
    Ok(json!({"count": count, "max_model_len": MAX_MODEL_LEN, "tokens": tokens, "token_strs": null}))
}

fn detokenize(doc: &Value) -> Result<Value, String> {
    let tokens = doc.get("tokens").and_then(Value::as_array).ok_or("`tokens` is required")?;
    let mut prompt = String::new();
    for t in tokens {
        let n = t.as_u64().ok_or("`tokens` must be token ids")?;
        super::openai::push_token(&mut prompt, u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok(json!({"prompt": prompt}))
}

/// `/v1/audio/transcriptions` and `/translations`: the multipart form's `model` and `file`;
/// the answer names the file's size. vLLM reports audio usage as a duration, not tokens.
fn audio(r: &Replica, content_type: &str, body: &Bytes) -> Response<Body> {
    let model = match crate::request_body::multipart_model(body, content_type) {
        Ok(m) => m,
        Err(e) => return response::bad_request(&format!("cannot read the form: {e}")),
    };
    let model = match served_model(r, model.as_deref()) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let seconds = (body.len() / 32_000).max(1);
    let text = format!("simulated transcription by {model} of {} bytes", body.len());
    let v = json!({"text": text, "usage": {"type": "duration", "seconds": seconds}});
    response::json(StatusCode::OK, v.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = tokenize(&json!({"model": "m", "prompt": "12345678"})).unwrap();
        assert_eq!(t["count"], 2);
        assert_eq!(t["tokens"], json!([1, 2]));
        assert_eq!(detokenize(&json!({"tokens": [1, 2]})).unwrap()["prompt"], "tok1 tok2 ");
        assert_eq!(texts(Some(&json!(["ab", "cd"]))).unwrap(), vec!["ab", "cd"]);
        assert_eq!(texts(Some(&json!([1, 2]))).unwrap(), vec!["1 2 "]);
        assert!(unit("x", 0) < 1.0 && unit("x", 0) == unit("x", 0) && unit("x", 0) != unit("x", 1));
    }
}
