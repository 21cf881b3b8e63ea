//! Runner configuration: an optional YAML file, then the environment on top (the environment
//! wins), validated once into [`Config`]. Every problem names its YAML path or variable, and all
//! problems are reported together so `--check` shows the full list at once.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// Binding environment variables (README.md and docs/telegram.md list them).
pub const ENV_BOT_TOKEN: &str = "MCAS_TELEGRAM_BOT_TOKEN";
pub const ENV_GATEWAY_URL: &str = "MCAS_GATEWAY_URL";
pub const ENV_GATEWAY_KEY: &str = "MCAS_GATEWAY_KEY";
pub const ENV_MODEL: &str = "MCAS_TELEGRAM_MODEL";
pub const ENV_API_URL: &str = "MCAS_TELEGRAM_API_URL";
pub const ENV_ALLOWED_USERS: &str = "MCAS_TELEGRAM_ALLOWED_USERS";
pub const ENV_STATE_DIR: &str = "MCAS_TELEGRAM_STATE_DIR";
pub const ENV_STATUS_LISTEN: &str = "MCAS_TELEGRAM_STATUS_LISTEN";
/// Not in the list, but a secret belongs in the environment, not in the file.
pub const ENV_WEBHOOK_SECRET: &str = "MCAS_TELEGRAM_WEBHOOK_SECRET";

pub(super) const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:18080";
pub(super) const DEFAULT_API_URL: &str = "https://api.telegram.org";
pub(super) const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:18090";

/// How a reply is shown while it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// `sendMessageDraft` in private chats, `sendMessage` + `editMessageText` elsewhere.
    Draft,
    /// `sendMessage` + throttled `editMessageText` everywhere.
    Edit,
    /// Only the finished answer is sent.
    Off,
}

/// Who may talk to the bot. Empty means nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedUsers {
    pub all: bool,
    pub ids: HashSet<i64>,
}

impl AllowedUsers {
    pub fn allows(&self, user_id: i64) -> bool {
        self.all || self.ids.contains(&user_id)
    }

    /// Parses `"123,456"` or `"*"` (also mixed; blanks ignored).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut out = AllowedUsers::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.all = true;
            } else {
                let id = item.parse::<i64>().map_err(|_| format!("`{item}` is not a numeric user id or `*`"))?;
                out.ids.insert(id);
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Local listener Telegram (or the reverse proxy in front) posts updates to.
    pub listen: SocketAddr,
    /// Path of the webhook endpoint on that listener.
    pub path: String,
    /// Compared (constant time) with `X-Telegram-Bot-Api-Secret-Token`.
    pub secret_token: Secret,
    /// Public HTTPS URL; when set, `setWebhook` is called at start.
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TelegramConfig {
    pub bot_token: Secret,
    /// Bot API base without `/bot<token>`.
    pub api_url: String,
    pub allowed_users: AllowedUsers,
    /// Server-side long-poll timeout of `getUpdates`.
    pub poll_timeout: Duration,
    pub stream_mode: StreamMode,
    /// Minimum time between two previews (draft or edit) in one private chat.
    pub edit_interval: Duration,
    /// Same for groups, where Telegram allows ~20 messages/min including edits.
    pub group_edit_interval: Duration,
    /// Present only with `--webhook`.
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL of the gateway, without `/v1`.
    pub url: String,
    pub key: Secret,
    /// Default model of every chat (`/model` overrides per chat).
    pub model: String,
    /// Longest wait for the response head and between two stream chunks.
    pub timeout: Duration,
    /// How often `/v1/models` is probed for `/status`.
    pub probe_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub system_prompt: Option<String>,
    /// History kept per chat, in messages (user + assistant) ...
    pub history_messages: usize,
    /// ... and in characters; the oldest exchanges go first.
    pub history_chars: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub telegram: TelegramConfig,
    pub gateway: GatewayConfig,
    pub chat: ChatConfig,
    pub state_dir: PathBuf,
    pub status_listen: SocketAddr,
}

/// One thing wrong with the configuration; `field` is the YAML path or the variable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// serde_yaml names the path of the bad field (e.g. `telegram: unknown field ...`).
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Looks a variable up; tests pass a map instead of the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Reads `path` (if any), then applies the environment. `webhook` is the `--webhook` flag.
    pub fn load(path: Option<&Path>, webhook: bool, env: Env<'_>) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                (text, p.display().to_string())
            }
            None => (String::new(), "environment".to_string()),
        };
        Self::from_yaml(&text, &origin, webhook, env)
    }

    /// Parses YAML text (empty means "environment only"); `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, webhook: bool, env: Env<'_>) -> Result<Config, ConfigError> {
        let raw: super::config_file::RawConfig = if text.trim().is_empty() {
            Default::default()
        } else {
            serde_yaml::from_str(text)
                .map_err(|e| ConfigError::Yaml { path: origin.to_string(), message: e.to_string() })?
        };
        super::config_file::resolve(raw, webhook, env).map_err(ConfigError::Invalid)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
