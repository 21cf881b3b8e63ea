//! The YAML schema (`conf/telegram.yaml`) and its resolution into the runtime [`Config`]:
//! environment first, then the file with `${VAR}` / `${VAR:-default}` expanded, then defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::config::*;
use crate::secret::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    telegram: RawTelegram,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    chat: RawChat,
    state_dir: Option<String>,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelegram {
    bot_token: Option<String>,
    api_url: Option<String>,
    allowed_users: Option<RawAllowed>,
    poll_timeout: Option<String>,
    stream_mode: Option<StreamMode>,
    edit_interval: Option<String>,
    group_edit_interval: Option<String>,
    webhook: Option<RawWebhook>,
}

/// `"*"`, `"1,2"` or a list of ids (a `"*"` item is allowed in the list too).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAllowed {
    Text(String),
    List(Vec<RawId>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawId {
    Id(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    listen: Option<String>,
    path: Option<String>,
    secret_token: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    url: Option<String>,
    key: Option<String>,
    model: Option<String>,
    timeout: Option<String>,
    probe_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChat {
    system_prompt: Option<String>,
    history_messages: Option<usize>,
    history_chars: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Option<String>,
}

/// Collects every problem instead of stopping at the first.
struct Resolver<'a> {
    env: Env<'a>,
    errors: Vec<FieldError>,
}

/// A value and the name to blame if it is wrong (variable name when it came from there).
struct Value {
    text: String,
    label: String,
}

impl Resolver<'_> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_string(), message: message.into() });
    }

    /// Environment wins; an empty variable counts as unset.
    fn pick(&mut self, file: Option<String>, field: &str, var: Option<&str>) -> Option<Value> {
        if let Some(var) = var {
            if let Some(text) = (self.env)(var).filter(|v| !v.is_empty()) {
                let label = format!("{var} (overrides {field})");
                return Some(Value { text, label });
            }
        }
        let raw = file?;
        let text = self.expand(&raw, field)?;
        let label = field.to_string();
        Some(Value { text, label })
    }

    fn required(&mut self, file: Option<String>, field: &str, var: Option<&str>) -> Option<Value> {
        let before = self.errors.len();
        let value = self.pick(file, field, var).filter(|v| !v.text.is_empty());
        // An expansion error already names the field; do not add "required" on top.
        if value.is_none() && self.errors.len() == before {
            match var {
                Some(var) => self.fail(field, format!("is required (set it here or in {var})")),
                None => self.fail(field, "is required"),
            }
        }
        value
    }

    /// Expands `${VAR}` and `${VAR:-default}` with the gateway's expander (same rules, `$$` for `$`).
    fn expand(&mut self, raw: &str, field: &str) -> Option<String> {
        match crate::config::expand::expand_str(raw, self.env) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.fail(field, msg);
                None
            }
        }
    }

    fn duration(&mut self, file: Option<String>, field: &str, default: Duration) -> Duration {
        let Some(v) = self.pick(file, field, None) else {
            return default;
        };
        match humantime::parse_duration(&v.text) {
            Ok(d) => d,
            Err(e) => {
                self.fail(&v.label, format!("`{}` is not a duration like 30s: {e}", v.text));
                default
            }
        }
    }

    fn socket(&mut self, v: Value) -> Option<SocketAddr> {
        match v.text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let msg = format!("`{}` is not an address like 127.0.0.1:18090", v.text);
                self.fail(&v.label, msg);
                None
            }
        }
    }

    /// An http(s) base URL without a trailing slash.
    fn base_url(&mut self, v: Value) -> Option<String> {
        match url::Url::parse(&v.text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(v.text.trim_end_matches('/').to_string())
            }
            _ => {
                self.fail(&v.label, format!("`{}` is not an http(s) URL", v.text));
                None
            }
        }
    }
}

/// Turns the raw file plus the environment into a [`Config`], or lists every problem.
pub(super) fn resolve(raw: RawConfig, webhook: bool, env: Env<'_>) -> Result<Config, Vec<FieldError>> {
    let mut r = Resolver { env, errors: Vec::new() };
    let telegram = telegram(&mut r, raw.telegram, webhook);
    let gateway = gateway(&mut r, raw.gateway);
    let chat = chat(&mut r, raw.chat);
    let state_dir = r.required(raw.state_dir, "state_dir", Some(ENV_STATE_DIR));
    let listen = r
        .pick(raw.status.listen, "status.listen", Some(ENV_STATUS_LISTEN))
        .unwrap_or_else(|| Value { text: DEFAULT_STATUS_LISTEN.to_string(), label: "status.listen".to_string() });
    let status_listen = r.socket(listen);
    match (telegram, gateway, state_dir, status_listen) {
        (Some(telegram), Some(gateway), Some(dir), Some(status_listen)) if r.errors.is_empty() => {
            Ok(Config { telegram, gateway, chat, state_dir: PathBuf::from(dir.text), status_listen })
        }
        _ => Err(r.errors),
    }
}

fn telegram(r: &mut Resolver<'_>, raw: RawTelegram, webhook: bool) -> Option<TelegramConfig> {
    let token = r.required(raw.bot_token, "telegram.bot_token", Some(ENV_BOT_TOKEN));
    if let Some(t) = &token {
        // The token goes into URL paths; never echo it, only say what is wrong.
        let ok = t.text.contains(':') && !t.text.contains(['/', ' ', '?', '#']);
        if !ok {
            r.fail(&t.label, "does not look like a bot token (<digits>:<secret>)");
        }
    }
    let api = r
        .pick(raw.api_url, "telegram.api_url", Some(ENV_API_URL))
        .unwrap_or_else(|| Value { text: DEFAULT_API_URL.to_string(), label: "telegram.api_url".to_string() });
    let api_url = r.base_url(api);
    let allowed_users = allowed(r, raw.allowed_users);
    let poll_timeout = r.duration(raw.poll_timeout, "telegram.poll_timeout", secs(30));
    if poll_timeout < secs(1) || poll_timeout > secs(60) {
        r.fail("telegram.poll_timeout", "must be between 1s and 60s");
    }
    let edit_interval = r.duration(raw.edit_interval, "telegram.edit_interval", secs(1));
    let group_edit_interval = r.duration(raw.group_edit_interval, "telegram.group_edit_interval", secs(3));
    let webhook = if webhook { webhook_config(r, raw.webhook) } else { None };
    Some(TelegramConfig {
        bot_token: Secret::new(token?.text),
        api_url: api_url?,
        allowed_users,
        poll_timeout,
        stream_mode: raw.stream_mode.unwrap_or(StreamMode::Draft),
        edit_interval,
        group_edit_interval,
        webhook,
    })
}

fn allowed(r: &mut Resolver<'_>, raw: Option<RawAllowed>) -> AllowedUsers {
    let field = "telegram.allowed_users";
    let text = match raw {
        None => None,
        Some(RawAllowed::Text(t)) => Some(t),
        Some(RawAllowed::List(items)) => {
            let parts: Vec<String> = items
                .into_iter()
                .map(|i| match i {
                    RawId::Id(id) => id.to_string(),
                    RawId::Text(t) => t,
                })
                .collect();
            Some(parts.join(","))
        }
    };
    let Some(v) = r.pick(text, field, Some(ENV_ALLOWED_USERS)) else {
        return AllowedUsers::default();
    };
    match AllowedUsers::parse(&v.text) {
        Ok(a) => a,
        Err(e) => {
            r.fail(&v.label, e);
            AllowedUsers::default()
        }
    }
}

fn webhook_config(r: &mut Resolver<'_>, raw: Option<RawWebhook>) -> Option<WebhookConfig> {
    let Some(raw) = raw else {
        r.fail("telegram.webhook", "is required with --webhook");
        return None;
    };
    let listen = r.required(raw.listen, "telegram.webhook.listen", None)?;
    let listen = r.socket(listen);
    let path =
        r.pick(raw.path, "telegram.webhook.path", None).map_or_else(|| "/telegram/webhook".to_string(), |v| v.text);
    if !path.starts_with('/') {
        r.fail("telegram.webhook.path", "must start with /");
    }
    let secret = r.required(raw.secret_token, "telegram.webhook.secret_token", Some(ENV_WEBHOOK_SECRET))?;
    // Telegram's own rule for secret_token: 1-256 of A-Z a-z 0-9 _ -.
    let valid =
        secret.text.len() <= 256 && secret.text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        r.fail(&secret.label, "must be 1-256 characters of A-Z, a-z, 0-9, _ and -");
    }
    let url = r.pick(raw.url, "telegram.webhook.url", None);
    let url = match url {
        Some(v) if !v.text.starts_with("https://") => {
            r.fail(&v.label, "must be an https:// URL (Telegram's rule)");
            None
        }
        other => other.map(|v| v.text),
    };
    Some(WebhookConfig { listen: listen?, path, secret_token: Secret::new(secret.text), url })
}

fn gateway(r: &mut Resolver<'_>, raw: RawGateway) -> Option<GatewayConfig> {
    let url = r
        .pick(raw.url, "gateway.url", Some(ENV_GATEWAY_URL))
        .unwrap_or_else(|| Value { text: DEFAULT_GATEWAY_URL.to_string(), label: "gateway.url".to_string() });
    let label = url.label.clone();
    let url = r.base_url(url);
    if url.as_deref().is_some_and(|u| u.ends_with("/v1")) {
        r.fail(&label, "give the gateway's base URL without /v1");
    }
    let key = r.required(raw.key, "gateway.key", Some(ENV_GATEWAY_KEY));
    let model = r.required(raw.model, "gateway.model", Some(ENV_MODEL));
    let timeout = r.duration(raw.timeout, "gateway.timeout", secs(120));
    let probe_interval = r.duration(raw.probe_interval, "gateway.probe_interval", secs(30));
    if probe_interval < secs(1) {
        r.fail("gateway.probe_interval", "must be at least 1s");
    }
    Some(GatewayConfig { url: url?, key: Secret::new(key?.text), model: model?.text, timeout, probe_interval })
}

fn chat(r: &mut Resolver<'_>, raw: RawChat) -> ChatConfig {
    let system_prompt = r
        .pick(raw.system_prompt, "chat.system_prompt", None)
        .map(|v| v.text.trim().to_string())
        .filter(|s| !s.is_empty());
    let history_messages = raw.history_messages.unwrap_or(20);
    let history_chars = raw.history_chars.unwrap_or(16_000);
    if !history_messages.is_multiple_of(2) {
        // History is kept as user/assistant pairs so roles keep alternating.
        r.fail("chat.history_messages", "must be even (pairs of user and assistant)");
    }
    ChatConfig { system_prompt, history_messages, history_chars }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
