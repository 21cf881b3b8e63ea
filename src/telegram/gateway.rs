//! Client of the MCAS gateway: streamed `/v1/chat/completions` (SSE `data:` lines until
//! `[DONE]`) and `/v1/models`. The gateway key goes in a header only, never in a URL or error.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bot_api::describe;
use crate::secret::Secret;
use crate::sse::{field, Token, Tokenizer, MAX_LINE};

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
        Ok(ChatStream::new(Box::pin(resp.bytes_stream()), self.timeout))
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

/// An SSE completion stream. Chunks may split lines anywhere and lines may end with LF,
/// CRLF or a bare CR: the bytes go through the one SSE tokenizer ([`crate::sse`]).
pub struct ChatStream {
    body: ByteStream,
    sse: Tokenizer,
    /// Lines complete but not yet returned: the `data` of each, or `None` for a line longer
    /// than the tokenizer's bound.
    lines: VecDeque<Option<Vec<u8>>>,
    idle: Duration,
    done: bool,
}

impl ChatStream {
    fn new(body: ByteStream, idle: Duration) -> Self {
        ChatStream { body, sse: Tokenizer::default(), lines: VecDeque::new(), idle, done: false }
    }

    /// The next piece of answer text; `None` after `[DONE]`.
    pub async fn next_delta(&mut self) -> Result<Option<String>, GatewayError> {
        loop {
            if self.done {
                return Ok(None);
            }
            while let Some(line) = self.lines.pop_front() {
                let Some(data) = line else {
                    return Err(GatewayError::Stream(format!("an SSE line longer than {MAX_LINE} bytes")));
                };
                match parse_data(&String::from_utf8_lossy(&data))? {
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
                Ok(Some(Ok(chunk))) => {
                    let lines = &mut self.lines;
                    self.sse.feed(&chunk, |t, _| match t {
                        Token::Line { text, .. } => {
                            if let Some(data) = field(text, b"data") {
                                lines.push_back(Some(data.to_vec()));
                            }
                        }
                        Token::LongLine => lines.push_back(None),
                        Token::Blank { .. } | Token::CrLfTail => {}
                    });
                }
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

/// The data of one SSE `data:` line: a chunk, or `[DONE]`.
fn parse_data(data: &str) -> Result<Line, GatewayError> {
    let data = data.trim();
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
    fn parses_sse_data() {
        let chunk = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        assert_eq!(parse_data(chunk).unwrap(), Line::Delta("Hi".into()));
        assert_eq!(parse_data("[DONE]").unwrap(), Line::Done);
        let role_only = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(parse_data(role_only).unwrap(), Line::Nothing);
        let usage = r#"{"choices":[],"usage":{"total_tokens":3}}"#;
        assert_eq!(parse_data(usage).unwrap(), Line::Nothing);
        assert!(parse_data(r#"{"error":{"message":"boom"}}"#).is_err());
    }

    async fn text_of(parts: &[&str]) -> Result<String, GatewayError> {
        let chunks: Vec<reqwest::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from(p.to_string()))).collect();
        let mut s = ChatStream::new(Box::pin(futures_util::stream::iter(chunks)), Duration::from_secs(1));
        let mut text = String::new();
        while let Some(d) = s.next_delta().await? {
            text.push_str(&d);
        }
        Ok(text)
    }

    #[tokio::test]
    async fn every_line_ending_and_split_gives_the_answer() {
        let stream = ": keepalive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        for eol in ["\n", "\r\n", "\r"] {
            let s = stream.replace('\n', eol);
            for cut in 0..=s.len() {
                assert_eq!(text_of(&[&s[..cut], &s[cut..]]).await.unwrap(), "Hello", "{eol:?} cut at {cut}");
            }
        }
    }

    #[tokio::test]
    async fn stream_without_done_is_an_error() {
        let chunks: Vec<reqwest::Result<Bytes>> =
            vec![Ok(Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n"))];
        let mut s = ChatStream::new(Box::pin(futures_util::stream::iter(chunks)), Duration::from_secs(1));
        assert_eq!(s.next_delta().await.unwrap().as_deref(), Some("x"));
        assert!(s.next_delta().await.is_err());
    }
}
