//! Showing one answer in a chat: progressive previews while it streams (a draft in private
//! chats, else a message edited at most once per interval), then the final text, split to
//! Telegram's limit and formatted as HTML with a plain-text fallback.
//!
//! Previews are best effort: a failed or flood-limited preview is skipped, never retried
//! (the next one supersedes it). The final text is retried until delivered or failed for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::bot_api::{BotApi, BotError, Format, Target};
use super::config::StreamMode;
use super::render;
use super::retry::retrying;
use super::split::{preview, split, MESSAGE_LIMIT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Display {
    Draft,
    Edit { message_id: Option<i64> },
    Off,
}

pub struct Reply<'a> {
    bot: &'a BotApi,
    to: Target,
    display: Display,
    /// Minimum time between two previews.
    interval: Duration,
    /// No preview before this instant (throttle, or Telegram's `retry_after`).
    next_at: Instant,
    draft_id: i64,
    /// Process-wide: cleared the first time the Bot API says it has no `sendMessageDraft`.
    drafts_supported: &'a AtomicBool,
    /// Whether the user already sees something (then the typing indicator can stop).
    visible: bool,
}

impl<'a> Reply<'a> {
    /// `draft_id` must be non-zero and unique per answer in the chat: the question's id is.
    pub fn new(
        bot: &'a BotApi,
        to: Target,
        mode: StreamMode,
        private: bool,
        interval: Duration,
        draft_id: i64,
        drafts_supported: &'a AtomicBool,
    ) -> Self {
        let display = match mode {
            StreamMode::Draft if private && drafts_supported.load(Ordering::Relaxed) => Display::Draft,
            StreamMode::Draft | StreamMode::Edit => Display::Edit { message_id: None },
            StreamMode::Off => Display::Off,
        };
        Reply { bot, to, display, interval, next_at: Instant::now(), draft_id, drafts_supported, visible: false }
    }

    pub fn is_visible(&self) -> bool {
        self.visible
    }

    /// Shows `text` (the answer so far) unless the last preview was too recent.
    pub async fn progress(&mut self, text: &str) {
        if self.display == Display::Off || Instant::now() < self.next_at || text.trim().is_empty() {
            return;
        }
        let shown = preview(text.trim(), MESSAGE_LIMIT);
        let result = match self.display {
            Display::Draft => {
                let r = self.bot.send_message_draft(self.to, self.draft_id, &shown).await;
                if let Err(e) = &r {
                    if e.code() == Some(404) || e.mentions("method not found") {
                        // An older or self-hosted Bot API: edits for the rest of the process.
                        log::warn!("{e}; falling back to sendMessage + editMessageText");
                        self.drafts_supported.store(false, Ordering::Relaxed);
                        self.display = Display::Edit { message_id: None };
                        return Box::pin(self.progress(text)).await;
                    }
                    if e.retry_after().is_none() && !e.is_transient() {
                        // e.g. a chat where drafts are not allowed: edits for this answer.
                        log::info!("{e}; using edits for this answer");
                        self.display = Display::Edit { message_id: None };
                    }
                }
                r
            }
            Display::Edit { message_id: None } => match self.bot.send_message(self.to, &shown, Format::Plain).await {
                Ok(m) => {
                    self.display = Display::Edit { message_id: Some(m.message_id) };
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Display::Edit { message_id: Some(id) } => {
                let r = self.bot.edit_message_text(self.to.chat_id, id, &shown, Format::Plain).await;
                match r {
                    Err(e) if e.mentions("message is not modified") => Ok(()),
                    other => other,
                }
            }
            Display::Off => Ok(()),
        };
        self.after_preview(result);
    }

    fn after_preview(&mut self, result: Result<(), BotError>) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.visible = true;
                self.next_at = now + self.interval;
            }
            Err(e) => match e.retry_after() {
                Some(wait) => {
                    log::warn!("preview: {e}; pausing previews for {}s", wait.as_secs());
                    self.next_at = now + wait;
                }
                None => {
                    log::warn!("preview: {e}");
                    self.next_at = now + self.interval;
                }
            },
        }
    }

    /// Delivers the finished answer.
    pub async fn finish(&mut self, text: &str) -> Result<(), BotError> {
        // Respect the throttle (and any flood wait) for the last edit too.
        tokio::time::sleep_until(self.next_at).await;
        let mut parts = split(text, MESSAGE_LIMIT);
        if parts.is_empty() {
            parts.push("(The model gave an empty answer.)".to_string());
        }
        for (i, part) in parts.iter().enumerate() {
            let edit = match self.display {
                Display::Edit { message_id } if i == 0 => message_id,
                _ => None,
            };
            // Only the first message of the answer replies to the question.
            let to = Target { reply_to: if i == 0 { self.to.reply_to } else { None }, ..self.to };
            self.deliver(to, edit, part).await?;
        }
        Ok(())
    }

    /// One part: HTML first, plain text if Telegram rejects the entities; a vanished
    /// preview message is replaced by a new one.
    async fn deliver(&self, to: Target, edit: Option<i64>, part: &str) -> Result<(), BotError> {
        let html = render::html(part);
        let result = match self.put(to, edit, &html, Format::Html).await {
            Err(e) if e.mentions("can't parse entities") => {
                log::info!("{e}; resending as plain text");
                self.put(to, edit, part, Format::Plain).await
            }
            other => other,
        };
        match result {
            Err(e) if e.mentions("message is not modified") => Ok(()),
            Err(e) if edit.is_some() && e.mentions("message to edit not found") => {
                Box::pin(self.deliver(to, None, part)).await
            }
            other => other,
        }
    }

    async fn put(&self, to: Target, edit: Option<i64>, text: &str, format: Format) -> Result<(), BotError> {
        retrying(|| async move {
            match edit {
                Some(id) => self.bot.edit_message_text(to.chat_id, id, text, format).await,
                None => self.bot.send_message(to, text, format).await.map(drop),
            }
        })
        .await
    }
}
