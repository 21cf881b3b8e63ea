//! Per-message decisions: is it for us (group mention rules), may this user talk to us
//! (allowlist), is it a command; then the commands themselves. Questions go to [`answer`].
//!
//! [`answer`]: super::answer

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::bot_api::{BotApi, Format, Target};
use super::bot_types::Message;
use super::config::{AllowedUsers, Config};
use super::gateway::Gateway;
use super::metrics::Metrics;
use super::retry::retrying;
use super::state::Store;
use super::status::Health;

/// The bot itself, from `getMe`.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: i64,
    /// Without the `@`.
    pub username: String,
}

/// Everything a chat task needs; shared by all chats.
pub struct Ctx {
    pub config: Config,
    pub bot: BotApi,
    pub gateway: Gateway,
    pub store: Store,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub me: Me,
    /// See [`super::reply::Reply`]: cleared once the Bot API lacks `sendMessageDraft`.
    pub drafts_supported: AtomicBool,
    /// (chat, user) pairs already refused, so each stranger hears "no" once per process.
    refused: Mutex<HashSet<(i64, i64)>>,
}

/// Bounds the refusal memory against floods of strangers.
const MAX_REFUSED: usize = 10_000;

impl Ctx {
    pub fn new(
        config: Config,
        bot: BotApi,
        gateway: Gateway,
        store: Store,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        me: Me,
    ) -> Ctx {
        Ctx {
            config,
            bot,
            gateway,
            store,
            health,
            metrics,
            me,
            drafts_supported: AtomicBool::new(true),
            refused: Mutex::new(HashSet::new()),
        }
    }

    /// True the first time only.
    fn first_refusal(&self, chat: i64, user: i64) -> bool {
        let mut set = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_REFUSED {
            set.clear();
        }
        set.insert((chat, user))
    }

    /// A short plain-text message, retried like any final text.
    pub async fn say(&self, to: Target, text: &str) {
        if let Err(e) = retrying(|| self.bot.send_message(to, text, Format::Plain)).await {
            log::warn!("chat {}: {e}", to.chat_id);
            self.metrics.error("telegram");
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Ignore,
    Refuse,
    Command { name: String, arg: String },
    Ask(String),
}

/// Decides what to do with a message. Order matters: a group message not addressed to us is
/// ignored silently, even from a stranger; an addressed one from a stranger is refused.
pub fn classify(msg: &Message, me: &Me, allowed: &AllowedUsers) -> Action {
    let (Some(text), Some(from)) = (msg.text.as_deref(), msg.from.as_ref()) else {
        return Action::Ignore;
    };
    if from.is_bot || !(msg.chat.is_private() || addressed(msg, text, me)) {
        return Action::Ignore;
    }
    if !allowed.allows(from.id) {
        return Action::Refuse;
    }
    let mention = format!("@{}", me.username.to_ascii_lowercase());
    if let Some(command) = text.strip_prefix('/') {
        let (head, arg) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
        let (name, target) = head.split_once('@').unwrap_or((head, ""));
        if !target.is_empty() && !target.eq_ignore_ascii_case(&me.username) {
            return Action::Ignore; // meant for another bot
        }
        return Action::Command { name: name.to_ascii_lowercase(), arg: arg.trim().to_string() };
    }
    let question = strip_ascii_ci(text, &mention);
    if question.trim().is_empty() {
        return Action::Command { name: "help".to_string(), arg: String::new() };
    }
    Action::Ask(question.trim().to_string())
}

/// In a group: an @mention, a command sent to `/cmd@us`, or a reply to one of our messages.
fn addressed(msg: &Message, text: &str, me: &Me) -> bool {
    let replied_to_us = msg.reply_to_message.as_ref().and_then(|m| m.from.as_ref()).is_some_and(|u| u.id == me.id);
    let mention = format!("@{}", me.username);
    replied_to_us
        || msg.entities.iter().any(|e| match e.kind.as_str() {
            "mention" => e.text_in(text).is_some_and(|t| t.eq_ignore_ascii_case(&mention)),
            "text_mention" => e.user.as_ref().is_some_and(|u| u.id == me.id),
            "bot_command" => e.text_in(text).is_some_and(|t| {
                let lower = t.to_ascii_lowercase();
                lower.ends_with(&mention.to_ascii_lowercase())
            }),
            _ => false,
        })
}

/// Removes every case-insensitive occurrence of the ASCII `needle` (lowercase).
fn strip_ascii_ci(text: &str, needle: &str) -> String {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` apply to `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (pos, _) in lower.match_indices(needle) {
        out.push_str(&text[last..pos]);
        last = pos + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

pub const HELP: &str = "Write me a message and I will answer.\n\n\
/reset — forget our conversation\n\
/model — show the current model and the available ones\n\
/model NAME — switch to another model\n\
/help — this text\n\n\
In groups, mention me or reply to one of my messages.";

/// Where answers to `msg` go: same chat and topic; in groups, as a reply to the question.
pub fn target_of(msg: &Message) -> Target {
    Target {
        chat_id: msg.chat.id,
        thread_id: msg.message_thread_id,
        reply_to: (!msg.chat.is_private()).then_some(msg.message_id),
    }
}

/// Handles one message to the end (answer delivered or failed).
pub async fn handle(ctx: &Ctx, msg: Message) {
    let to = target_of(&msg);
    let action = classify(&msg, &ctx.me, &ctx.config.telegram.allowed_users);
    let kind = match &action {
        Action::Ignore => "ignored",
        Action::Refuse => "refused",
        Action::Command { .. } => "command",
        Action::Ask(_) => "ask",
    };
    ctx.metrics.updates.with_label_values(&[kind]).inc();
    match action {
        Action::Ignore => {}
        Action::Refuse => {
            let user = msg.from.as_ref().map_or(0, |u| u.id);
            log::info!("chat {}: refusing user {user} (not on the allowlist)", to.chat_id);
            if ctx.first_refusal(to.chat_id, user) {
                let text = format!(
                    "Sorry, I only talk to people on my allowlist. \
                     Your Telegram user id is {user}; the bot's operator can add it."
                );
                ctx.say(to, &text).await;
            }
        }
        Action::Command { name, arg } => command(ctx, to, &name, &arg).await,
        Action::Ask(question) => super::answer::answer(ctx, &msg, to, &question).await,
    }
}

async fn command(ctx: &Ctx, to: Target, name: &str, arg: &str) {
    let text = match name {
        "start" => format!("Hello! I answer with the model {}.\n\n{HELP}", ctx.config.gateway.model),
        "help" => HELP.to_string(),
        "reset" => {
            let mut state = ctx.store.load_chat(to.chat_id).await;
            state.history.clear();
            match ctx.store.save_chat(to.chat_id, &state).await {
                Ok(()) => "Done: I forgot our conversation.".to_string(),
                Err(e) => {
                    log::error!("chat {}: {e}", to.chat_id);
                    ctx.metrics.error("state");
                    "Sorry, I could not clear the conversation. Please try again.".to_string()
                }
            }
        }
        "model" => model_command(ctx, to.chat_id, arg).await,
        _ => format!("I don't know that command.\n\n{HELP}"),
    };
    ctx.say(to, &text).await;
}

/// `/model` lists, `/model NAME` switches; only to models the gateway lists for our key.
async fn model_command(ctx: &Ctx, chat_id: i64, arg: &str) -> String {
    let mut state = ctx.store.load_chat(chat_id).await;
    let current = state.model.clone().unwrap_or_else(|| ctx.config.gateway.model.clone());
    let models = match ctx.gateway.models().await {
        Ok(m) => m,
        Err(e) => {
            log::warn!("chat {chat_id}: listing models: {e}");
            ctx.metrics.error("gateway");
            return format!("Current model: {current}. I can't list the others right now.");
        }
    };
    if arg.is_empty() {
        return format!("Current model: {current}\nAvailable: {}", models.join(", "));
    }
    if !models.iter().any(|m| m == arg) {
        return format!("There is no model {arg}. Available: {}", models.join(", "));
    }
    state.model = (arg != ctx.config.gateway.model).then(|| arg.to_string());
    match ctx.store.save_chat(chat_id, &state).await {
        Ok(()) => format!("Model set to {arg}."),
        Err(e) => {
            log::error!("chat {chat_id}: {e}");
            ctx.metrics.error("state");
            "Sorry, I could not save that. Please try again.".to_string()
        }
    }
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
