//! OpenAI wire shapes: the request fields the simulator reads, the prompt text it derives, and
//! the non-streamed `chat.completion` / `text_completion` and `/models` bodies.
//!
//! Prompt text (used for `prompt_tokens` and the prefix cache): for chat, each message as
//! `<|role|>` followed by its text content (string, or the `text` of each content part), in
//! order; for completions, `prompt` as given (a list of prompts is concatenated; token ids are
//! written as decimal numbers followed by a space). `prompt_tokens` = ceil(bytes / 4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which completion endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    prompt: Option<Value>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of a completion request that shape the answer.
#[derive(Debug)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: String,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a request body; the error is the message of a 400.
pub fn parse(kind: Kind, body: &[u8]) -> Result<CompletionRequest, String> {
    let raw: RawRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let prompt = match kind {
        Kind::Chat => chat_prompt(raw.messages.ok_or("`messages` is required")?),
        Kind::Text => {
            let mut out = String::new();
            push_prompt(&mut out, &raw.prompt.ok_or("`prompt` is required")?)?;
            out
        }
    };
    Ok(CompletionRequest {
        model: raw.model,
        prompt,
        max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
        stream: raw.stream.unwrap_or(false),
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
    })
}

fn chat_prompt(messages: Vec<Message>) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|");
        out.push_str(&m.role);
        out.push_str("|>");
        match m.content {
            Some(Content::Text(t)) => out.push_str(&t),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .for_each(|t| out.push_str(t)),
            None => {}
        }
    }
    out
}

fn push_prompt(out: &mut String, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        Value::Array(items) => items.iter().try_for_each(|i| push_prompt(out, i))?,
        _ => return Err("`prompt` must be a string, a list of strings or token ids".into()),
    }
    Ok(())
}

/// The deterministic text of token `i` (1-based): `tok1 `, `tok2 `, …
pub fn push_token(out: &mut String, i: u32) {
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = write!(out, "tok{i} ");
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64, cached: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails {
                cached_tokens: cached,
            },
        }
    }
}

/// One answer, streamed or not.
#[derive(Debug, Clone)]
pub struct Answer {
    pub kind: Kind,
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    /// Completion tokens to produce.
    pub tokens: u32,
    /// `stop`, or `length` when `max_tokens` cut the answer short.
    pub finish: &'static str,
    pub usage: Usage,
}

#[derive(Serialize)]
struct Full<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [C; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

impl Answer {
    /// The whole generated text.
    pub fn content(&self) -> String {
        let mut s = String::with_capacity(self.tokens as usize * 8);
        (1..=self.tokens).for_each(|i| push_token(&mut s, i));
        s
    }

    /// The non-streamed body.
    pub fn full_body(&self) -> Vec<u8> {
        let content = self.content();
        let result = match self.kind {
            Kind::Chat => serde_json::to_vec(&Full {
                id: &self.id,
                object: "chat.completion",
                created: self.created,
                model: &self.model,
                choices: [ChatChoice {
                    index: 0,
                    message: ChatMessage {
                        role: "assistant",
                        content: &content,
                    },
                    logprobs: None,
                    finish_reason: self.finish,
                }],
                usage: self.usage,
            }),
            Kind::Text => serde_json::to_vec(&Full {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: [TextChoice {
                    index: 0,
                    text: &content,
                    logprobs: None,
                    finish_reason: self.finish,
                }],
                usage: self.usage,
            }),
        };
        // Serializing these plain structs cannot fail.
        result.unwrap_or_default()
    }
}

/// `GET /v1/models`.
pub fn models_body(models: &[String]) -> Vec<u8> {
    let data: Vec<Value> = models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "mcas-sim"}))
        .collect();
    serde_json::json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_marks_roles_and_joins_parts() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
            "max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
        let r = parse(Kind::Chat, body).unwrap();
        assert_eq!(r.prompt, "<|system|>be brief<|user|>hi there");
        assert_eq!(r.max_tokens, Some(3));
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn completion_prompt_forms() {
        let r = parse(
            Kind::Text,
            br#"{"prompt":["ab","cd"],"max_completion_tokens":2,"max_tokens":9}"#,
        )
        .unwrap();
        assert_eq!(r.prompt, "abcd");
        assert_eq!(r.max_tokens, Some(2));
        let r = parse(Kind::Text, br#"{"prompt":[1,22]}"#).unwrap();
        assert_eq!(r.prompt, "1 22 ");
        assert!(parse(Kind::Text, br#"{"prompt":{}}"#).is_err());
        assert!(parse(Kind::Chat, br#"{"prompt":"x"}"#).is_err());
        assert!(parse(Kind::Chat, b"{").is_err());
    }

    #[test]
    fn full_body_has_usage_and_content() {
        let a = Answer {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m\"x".into(),
            tokens: 2,
            finish: "length",
            usage: Usage::new(5, 2, 4),
        };
        let v: Value = serde_json::from_slice(&a.full_body()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["choices"][0]["message"]["content"], "tok1 tok2 ");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }
}
