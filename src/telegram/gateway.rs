//! Client of the MCAS gateway: streamed `/v1/chat/completions` (SSE `data:` lines until
//! `[DONE]`) and `/v1/models`. The gateway key goes in a header only, never in a URL or error.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bot_api::describe;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.to_string(), content: content.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 429: tell the user when to come back.
    #[error("gateway rate limit (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// 401/403 without a model problem: our key is wrong or revoked.
    #[error("gateway refused the key ({status})")]
    Unauthorized { status: u16 },
    /// 404 or 403 about the model: the user can pick another one.
    #[error("model not available ({status}): {message}")]
    Model { status: u16, message: String },
    #[error("gateway answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("gateway unreachable: {0}")]
    Network(String),
    #[error("stream broken: {0}")]
    Stream(String),
}

impl GatewayError {
    /// Whether this says the gateway (or its key) is unhealthy, for `/status`.
    pub fn is_outage(&self) -> bool {
        match self {
            GatewayError::Unauthorized { .. } | GatewayError::Network(_) => true,
            GatewayError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    url: String,
    key: Secret,
    timeout: Duration,
}

impl Gateway {
    pub fn new(url: &str, key: &Secret, timeout: Duration) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| GatewayError::Network(describe(e)))?;
        Ok(Gateway { http, url: url.to_string(), key: key.clone(), timeout })
    }

    /// Model ids this key may use.
    pub async fn models(&self) -> Result<Vec<String>, GatewayError> {
        let req = self.http.get(format!("{}/v1/models", self.url));
        let resp = self.send(req).await?;
        let body: Value = resp.json().await.map_err(|e| GatewayError::Stream(describe(e)))?;
        let ids = body["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str()).map(String::from))
            .map(Iterator::collect)
            .unwrap_or_default();
        Ok(ids)
    }

    /// Starts a streamed completion; read it with [`ChatStream::next_delta`].
    pub async fn stream_chat(&self, model: &str, messages: &[ChatMessage]) -> Result<ChatStream, GatewayError> {
        let body = json!({ "model": model, "messages": messages, "stream": true });
        let req = self.http.post(format!("{}/v1/chat/completions", self.url)).json(&body);
        let resp = self.send(req).await?;
        Ok(ChatStream { body: Box::pin(resp.bytes_stream()), buf: Vec::new(), idle: self.timeout, done: false })
    }

    /// Sends with the key and turns non-2xx answers into typed errors.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, GatewayError> {
        let req = req.bearer_auth(self.key.expose()).send();
        let resp = match tokio::time::timeout(self.timeout, req).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(GatewayError::Network(describe(e))),
            Err(_) => return Err(GatewayError::Network("no answer in time".to_string())),
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let (message, code) = error_message(&text);
        Err(match status {
            429 => GatewayError::RateLimited { retry_after },
            404 => GatewayError::Model { status, message },
            403 if code.contains("model") || message.contains("model") => GatewayError::Model { status, message },
            401 | 403 => GatewayError::Unauthorized { status },
            _ => GatewayError::Status { status, message },
        })
    }
}

/// Message and code of an OpenAI-style error body, shortened for logs.
fn error_message(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = v["error"]["message"].as_str().unwrap_or(body).chars().take(200).collect();
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    (message, code)
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An SSE completion stream. Chunks may split lines anywhere, so bytes are buffered until
/// a newline.
pub struct ChatStream {
    body: ByteStream,
    buf: Vec<u8>,
    idle: Duration,
    done: bool,
}

impl ChatStream {
    /// The next piece of answer text; `None` after `[DONE]`.
    pub async fn next_delta(&mut self) -> Result<Option<String>, GatewayError> {
        loop {
            if self.done {
                return Ok(None);
            }
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                match parse_line(&String::from_utf8_lossy(&line))? {
                    Line::Delta(text) => return Ok(Some(text)),
                    Line::Done => {
                        self.done = true;
                        return Ok(None);
                    }
                    Line::Nothing => {}
                }
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => return Err(GatewayError::Stream("stream stalled".to_string())),
                Ok(None) => return Err(GatewayError::Stream("ended before [DONE]".to_string())),
                Ok(Some(Err(e))) => return Err(GatewayError::Stream(describe(e))),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Line {
    Delta(String),
    Done,
    Nothing,
}

/// One SSE line: `data: {chunk}`, `data: [DONE]`, or anything else (comments, `event:`, blank).
fn parse_line(line: &str) -> Result<Line, GatewayError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(Line::Nothing);
    };
    let data = data.trim_start();
    if data == "[DONE]" {
        return Ok(Line::Done);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| GatewayError::Stream(format!("bad chunk: {e}")))?;
    if let Some(err) = v.get("error") {
        let msg = err["message"].as_str().unwrap_or("error in stream");
        return Err(GatewayError::Stream(msg.chars().take(200).collect()));
    }
    match v["choices"][0]["delta"]["content"].as_str() {
        Some(text) if !text.is_empty() => Ok(Line::Delta(text.to_string())),
        _ => Ok(Line::Nothing),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sse_lines() {
        let chunk = r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        assert_eq!(parse_line(chunk).unwrap(), Line::Delta("Hi".into()));
        assert_eq!(parse_line("data: [DONE]\r\n").unwrap(), Line::Done);
        assert_eq!(parse_line(": keepalive").unwrap(), Line::Nothing);
        assert_eq!(parse_line("").unwrap(), Line::Nothing);
        let role_only = r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(parse_line(role_only).unwrap(), Line::Nothing);
        let usage = r#"data: {"choices":[],"usage":{"total_tokens":3}}"#;
        assert_eq!(parse_line(usage).unwrap(), Line::Nothing);
        assert!(parse_line(r#"data: {"error":{"message":"boom"}}"#).is_err());
    }

    #[tokio::test]
    async fn stream_reassembles_lines_split_across_chunks() {
        let parts = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\nda",
            "ta: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n",
            "\ndata: [DONE]\n\n",
        ];
        let chunks: Vec<reqwest::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from(*p))).collect();
        let mut s = ChatStream {
            body: Box::pin(futures_util::stream::iter(chunks)),
            buf: Vec::new(),
            idle: Duration::from_secs(1),
            done: false,
        };
        let mut text = String::new();
        while let Some(d) = s.next_delta().await.unwrap() {
            text.push_str(&d);
        }
        assert_eq!(text, "Hello");
    }

    #[tokio::test]
    async fn stream_without_done_is_an_error() {
        let chunks: Vec<reqwest::Result<Bytes>> =
            vec![Ok(Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n"))];
        let mut s = ChatStream {
            body: Box::pin(futures_util::stream::iter(chunks)),
            buf: Vec::new(),
            idle: Duration::from_secs(1),
            done: false,
        };
        assert_eq!(s.next_delta().await.unwrap().as_deref(), Some("x"));
        assert!(s.next_delta().await.is_err());
    }
}
