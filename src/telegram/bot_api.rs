//! A small hand-written Bot API client for the few methods the runner needs.
//!
//! The token is part of every URL (`{api_url}/bot{TOKEN}/{method}`), so no URL ever leaves
//! this module: transport errors are stripped with `reqwest::Error::without_url` and errors
//! name the method only.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::bot_types::{Envelope, Message, Update, User};
use crate::secret::Secret;

/// Only messages: the runner reads nothing else, and an omitted list would keep whatever an
/// earlier client configured.
pub const ALLOWED_UPDATES: &[&str] = &["message"];

/// Timeout of every call but the long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The long poll's HTTP timeout is the server-side timeout plus this slack.
const POLL_SLACK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Telegram answered `ok: false`.
    #[error("{method}: Telegram error {code}: {description}")]
    Api { method: &'static str, code: i64, description: String, retry_after: Option<Duration> },
    /// No answer: connect, TLS, timeout. Never contains the URL.
    #[error("{method}: network error: {message}")]
    Network { method: &'static str, message: String },
    #[error("{method}: unreadable answer: {message}")]
    Decode { method: &'static str, message: String },
}

impl BotError {
    /// `Some` on flood control (429): wait exactly this long, then retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BotError::Api { code: 429, retry_after, .. } => Some(retry_after.unwrap_or(Duration::from_secs(1))),
            _ => None,
        }
    }

    /// Worth retrying with backoff: network trouble and Telegram's own 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            BotError::Network { .. } => true,
            BotError::Api { code, .. } => *code >= 500,
            BotError::Decode { .. } => false,
        }
    }

    pub fn code(&self) -> Option<i64> {
        match self {
            BotError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Case-insensitive search in Telegram's description ("can't parse entities", ...).
    pub fn mentions(&self, needle: &str) -> bool {
        match self {
            BotError::Api { description, .. } => {
                description.to_ascii_lowercase().contains(&needle.to_ascii_lowercase())
            }
            _ => false,
        }
    }
}

/// Renders a transport error without its URL (which holds the token), with its causes.
pub(super) fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `parse_mode` of outgoing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Html,
}

/// Where a message goes: chat, optional forum topic, optional message it answers.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub chat_id: i64,
    pub thread_id: Option<i64>,
    pub reply_to: Option<i64>,
}

#[derive(Clone)]
pub struct BotApi {
    http: reqwest::Client,
    /// `{api_url}/bot{TOKEN}`: secret, never logged.
    base: Secret,
}

impl BotApi {
    pub fn new(api_url: &str, token: &Secret) -> Result<Self, BotError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BotError::Network { method: "client", message: describe(e) })?;
        let base = Secret::new(format!("{api_url}/bot{}", token.expose()));
        Ok(BotApi { http, base })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        body: &Value,
        timeout: Duration,
    ) -> Result<T, BotError> {
        let url = format!("{}/{method}", self.base.expose());
        let net = |e| BotError::Network { method, message: describe(e) };
        let resp = self.http.post(url).json(body).timeout(timeout).send().await.map_err(net)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(net)?;
        let envelope: Envelope<T> = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            // A proxy in front may answer with HTML; keep the status, it says most.
            Err(_) if !status.is_success() => {
                return Err(BotError::Api {
                    method,
                    code: i64::from(status.as_u16()),
                    description: format!("HTTP {status}"),
                    retry_after: None,
                })
            }
            Err(e) => return Err(BotError::Decode { method, message: e.to_string() }),
        };
        match (envelope.ok, envelope.result) {
            (true, Some(result)) => Ok(result),
            (true, None) => Err(BotError::Decode { method, message: "ok without result".to_string() }),
            (false, _) => Err(BotError::Api {
                method,
                code: envelope.error_code.unwrap_or(i64::from(status.as_u16())),
                description: envelope.description.unwrap_or_default(),
                retry_after: envelope.parameters.and_then(|p| p.retry_after).map(Duration::from_secs),
            }),
        }
    }

    pub async fn get_me(&self) -> Result<User, BotError> {
        self.call("getMe", &json!({}), CALL_TIMEOUT).await
    }

    /// Keeps pending updates: they are ours to answer.
    pub async fn delete_webhook(&self) -> Result<bool, BotError> {
        let body = json!({ "drop_pending_updates": false });
        self.call("deleteWebhook", &body, CALL_TIMEOUT).await
    }

    pub async fn set_webhook(&self, url: &str, secret: &Secret) -> Result<bool, BotError> {
        let body = json!({
            "url": url,
            "secret_token": secret.expose(),
            "allowed_updates": ALLOWED_UPDATES,
            // One delivery at a time keeps update ids in order for the ledger's dedup.
            "max_connections": 1,
        });
        self.call("setWebhook", &body, CALL_TIMEOUT).await
    }

    /// Long poll: returns at once when updates wait, else after `timeout` with none.
    pub async fn get_updates(&self, offset: i64, timeout: Duration) -> Result<Vec<Update>, BotError> {
        let body = json!({
            "offset": offset,
            "limit": 100,
            "timeout": timeout.as_secs(),
            "allowed_updates": ALLOWED_UPDATES,
        });
        self.call("getUpdates", &body, timeout + POLL_SLACK).await
    }

    pub async fn send_message(&self, to: Target, text: &str, format: Format) -> Result<Message, BotError> {
        let mut body = json!({ "chat_id": to.chat_id, "text": text });
        if let Some(thread) = to.thread_id {
            body["message_thread_id"] = json!(thread);
        }
        if let Some(id) = to.reply_to {
            // Still deliver the answer if the question was deleted meanwhile.
            body["reply_parameters"] = json!({ "message_id": id, "allow_sending_without_reply": true });
        }
        if format == Format::Html {
            body["parse_mode"] = json!("HTML");
        }
        self.call("sendMessage", &body, CALL_TIMEOUT).await
    }

    /// Answers `true` for inline messages and the edited `Message` otherwise; both are fine.
    pub async fn edit_message_text(
        &self,
        chat_id: i64,
        message_id: i64,
        text: &str,
        format: Format,
    ) -> Result<(), BotError> {
        let mut body = json!({ "chat_id": chat_id, "message_id": message_id, "text": text });
        if format == Format::Html {
            body["parse_mode"] = json!("HTML");
        }
        self.call::<Value>("editMessageText", &body, CALL_TIMEOUT).await.map(drop)
    }

    /// Private chats only (Bot API 9.5+): an ephemeral preview animated per `draft_id`.
    pub async fn send_message_draft(&self, to: Target, draft_id: i64, text: &str) -> Result<(), BotError> {
        let mut body = json!({ "chat_id": to.chat_id, "draft_id": draft_id, "text": text });
        if let Some(thread) = to.thread_id {
            body["message_thread_id"] = json!(thread);
        }
        self.call::<Value>("sendMessageDraft", &body, CALL_TIMEOUT).await.map(drop)
    }

    pub async fn send_typing(&self, to: Target) -> Result<(), BotError> {
        let mut body = json!({ "chat_id": to.chat_id, "action": "typing" });
        if let Some(thread) = to.thread_id {
            body["message_thread_id"] = json!(thread);
        }
        self.call::<Value>("sendChatAction", &body, CALL_TIMEOUT).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_control_and_transient_classes() {
        let flood = BotError::Api {
            method: "sendMessage",
            code: 429,
            description: "Too Many Requests: retry after 3".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(flood.retry_after(), Some(Duration::from_secs(3)));
        assert!(!flood.is_transient());
        let down =
            BotError::Api { method: "sendMessage", code: 502, description: "Bad Gateway".into(), retry_after: None };
        assert!(down.is_transient() && down.retry_after().is_none());
        let entities = BotError::Api {
            method: "sendMessage",
            code: 400,
            description: "Bad Request: can't parse entities: unexpected end tag".into(),
            retry_after: None,
        };
        assert!(entities.mentions("Can't parse entities"));
    }
}
