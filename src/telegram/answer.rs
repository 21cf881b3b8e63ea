//! Answering a question: history + question to the gateway as a stream, the answer shown
//! progressively ([`Reply`]), history saved. Failures become one short sentence in the chat
//! and one log line; never a key, a URL or a stack trace in the chat.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::bot_api::{BotApi, Target};
use super::bot_types::Message;
use super::chat::Ctx;
use super::gateway::{ChatMessage, GatewayError};
use super::reply::Reply;

/// Telegram shows "typing…" for up to 5 s per `sendChatAction`.
const TYPING_EVERY: Duration = Duration::from_millis(4500);

/// Keeps "typing…" on screen until dropped.
struct Typing(JoinHandle<()>);

impl Typing {
    fn start(bot: BotApi, to: Target) -> Typing {
        Typing(tokio::spawn(async move {
            loop {
                if let Err(e) = bot.send_typing(to).await {
                    log::debug!("chat {}: {e}", to.chat_id);
                }
                tokio::time::sleep(TYPING_EVERY).await;
            }
        }))
    }
}

impl Drop for Typing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn answer(ctx: &Ctx, msg: &Message, to: Target, question: &str) {
    let started = Instant::now();
    let chat_id = to.chat_id;
    let mut state = ctx.store.load_chat(chat_id).await;
    let model = state.model.clone().unwrap_or_else(|| ctx.config.gateway.model.clone());
    let mut messages = Vec::with_capacity(state.history.len() + 2);
    if let Some(prompt) = &ctx.config.chat.system_prompt {
        messages.push(ChatMessage::new("system", prompt.as_str()));
    }
    messages.extend(state.history.iter().cloned());
    messages.push(ChatMessage::new("user", question));

    let tg = &ctx.config.telegram;
    let interval = if msg.chat.is_private() { tg.edit_interval } else { tg.group_edit_interval };
    let mut reply = Reply::new(
        &ctx.bot,
        to,
        tg.stream_mode,
        msg.chat.is_private(),
        interval,
        msg.message_id,
        &ctx.drafts_supported,
    );
    let mut typing = Some(Typing::start(ctx.bot.clone(), to));
    let (text, error) = stream(ctx, &model, &messages, &mut reply, &mut typing, started).await;
    drop(typing);

    let delivered = match &error {
        None => {
            ctx.metrics.completions.with_label_values(&["ok"]).inc();
            ctx.health.gateway(Ok(()));
            reply.finish(&text).await
        }
        Some(err) => {
            let (outcome, notice) = explain(err, &model);
            log::error!("chat {chat_id}: model {model}: {err}");
            ctx.metrics.completions.with_label_values(&[outcome]).inc();
            ctx.metrics.error("gateway");
            if err.is_outage() {
                ctx.health.gateway(Err(err.to_string()));
            }
            let shown = if text.trim().is_empty() { notice } else { format!("{text}\n\n({notice})") };
            reply.finish(&shown).await
        }
    };
    if let Err(e) = delivered {
        log::warn!("chat {chat_id}: delivering the answer: {e}");
        ctx.metrics.error("telegram");
    }
    ctx.metrics.reply.observe(started.elapsed().as_secs_f64());
    // Only complete exchanges enter the history; a broken one would confuse the next turn.
    if error.is_none() {
        let c = &ctx.config.chat;
        state.remember(question, &text, c.history_messages, c.history_chars);
        if let Err(e) = ctx.store.save_chat(chat_id, &state).await {
            log::error!("chat {chat_id}: {e}");
            ctx.metrics.error("state");
        }
    }
}

/// Reads the stream into `reply`; returns the text so far and the error that ended it, if any.
async fn stream(
    ctx: &Ctx,
    model: &str,
    messages: &[ChatMessage],
    reply: &mut Reply<'_>,
    typing: &mut Option<Typing>,
    started: Instant,
) -> (String, Option<GatewayError>) {
    let mut text = String::new();
    let mut stream = match ctx.gateway.stream_chat(model, messages).await {
        Ok(s) => s,
        Err(e) => return (text, Some(e)),
    };
    loop {
        match stream.next_delta().await {
            Ok(Some(delta)) => {
                if text.is_empty() {
                    let secs = started.elapsed().as_secs_f64();
                    ctx.metrics.first_token.observe(secs);
                }
                text.push_str(&delta);
                reply.progress(&text).await;
                if reply.is_visible() {
                    *typing = None;
                }
            }
            Ok(None) => return (text, None),
            Err(e) => return (text, Some(e)),
        }
    }
}

/// (metric outcome, what the user reads).
fn explain(err: &GatewayError, model: &str) -> (&'static str, String) {
    match err {
        GatewayError::RateLimited { retry_after } => {
            let when = match retry_after {
                Some(d) if d.as_secs() <= 1 => "in a second".to_string(),
                Some(d) => format!("in {} seconds", d.as_secs()),
                None => "in a minute".to_string(),
            };
            let text = format!("I'm getting too many requests right now. Please try again {when}.");
            ("rate_limited", text)
        }
        GatewayError::Model { .. } => {
            let text = format!("The model {model} is not available. Use /model to pick another.");
            ("model", text)
        }
        GatewayError::Unauthorized { .. } => (
            "unauthorized",
            "Sorry, I can't reach the model right now. The operator will have to look into it.".to_string(),
        ),
        GatewayError::Status { .. } | GatewayError::Network(_) => {
            ("unavailable", "Sorry, the model service is unavailable right now. Please try again later.".to_string())
        }
        GatewayError::Stream(_) => ("stream", "Sorry, the answer was interrupted. Please try again.".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_texts_say_when_and_hide_details() {
        let e = GatewayError::RateLimited { retry_after: Some(Duration::from_secs(7)) };
        assert!(explain(&e, "m").1.contains("in 7 seconds"));
        let e = GatewayError::Network("tcp connect error: Connection refused".into());
        let (outcome, text) = explain(&e, "m");
        assert_eq!(outcome, "unavailable");
        assert!(!text.contains("Connection refused"));
        let e = GatewayError::Unauthorized { status: 401 };
        assert!(!explain(&e, "m").1.contains("401"));
    }
}
