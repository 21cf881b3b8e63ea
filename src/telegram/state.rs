//! What survives a restart, as small JSON files in the state directory, each replaced
//! atomically (temp file, fsync, rename, fsync of the directory) so a crash leaves either the
//! old or the new version, never half a file.
//!
//! * `updates.json` — the update ledger: the next `getUpdates` offset and the updates received
//!   but not yet handled. Updates are journaled here *before* the offset confirms them to
//!   Telegram and removed once handled, so a restart neither loses nor repeats one.
//! * `chats/<chat id>.json` — per chat: history and the `/model` choice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bot_types::Update;
use super::gateway::ChatMessage;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not valid JSON: {message}")]
    Corrupt { path: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.display().to_string(), source }
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename itself is durable only once the directory entry is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and parses `path`; `None` if it does not exist.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt { path: path.display().to_string(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail; an empty file would then be "corrupt".
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// One chat's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatState {
    /// Set by `/model`; `None` means the configured default.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub history: Vec<ChatMessage>,
}

impl ChatState {
    /// Appends an exchange, then drops the oldest exchanges until both bounds hold. Whole
    /// pairs go, so the history always starts with a user message (strict chat templates
    /// reject anything else).
    pub fn remember(&mut self, user: &str, answer: &str, max_messages: usize, max_chars: usize) {
        self.history.push(ChatMessage::new("user", user));
        self.history.push(ChatMessage::new("assistant", answer));
        let chars = |h: &[ChatMessage]| h.iter().map(|m| m.content.chars().count()).sum::<usize>();
        while !self.history.is_empty() && (self.history.len() > max_messages || chars(&self.history) > max_chars) {
            self.history.remove(0);
            while self.history.first().is_some_and(|m| m.role != "user") {
                self.history.remove(0);
            }
        }
    }
}

/// Files under the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory tree if needed.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let chats = dir.join("chats");
        std::fs::create_dir_all(&chats).map_err(io_err(&chats))?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    fn chat_path(&self, chat_id: i64) -> PathBuf {
        self.dir.join("chats").join(format!("{chat_id}.json"))
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("updates.json")
    }

    /// A missing file is an empty chat; a corrupt one is set aside so the chat can go on.
    pub async fn load_chat(&self, chat_id: i64) -> ChatState {
        let path = self.chat_path(chat_id);
        let result = tokio::task::spawn_blocking({
            let path = path.clone();
            move || read_json::<ChatState>(&path)
        })
        .await;
        match result {
            Ok(Ok(state)) => state.unwrap_or_default(),
            Ok(Err(e)) => {
                log::error!("{e}; starting this chat afresh");
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                ChatState::default()
            }
            Err(e) => {
                log::error!("reading chat state: {e}");
                ChatState::default()
            }
        }
    }

    pub async fn save_chat(&self, chat_id: i64, state: &ChatState) -> Result<(), StateError> {
        let path = self.chat_path(chat_id);
        let bytes = to_json(state);
        blocking(move || write_atomic(&path, &bytes)).await
    }
}

async fn blocking(f: impl FnOnce() -> Result<(), StateError> + Send + 'static) -> Result<(), StateError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(io_err(Path::new("."))(std::io::Error::other(e))))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerFile {
    offset: i64,
    #[serde(default)]
    pending: Vec<Update>,
}

/// The update ledger (see the module comment). One owner; callers wrap it in a mutex.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    /// Next `getUpdates` offset: highest update id received + 1.
    offset: i64,
    /// Received, not yet handled, by update id.
    pending: BTreeMap<i64, Update>,
}

impl Ledger {
    pub fn load(path: PathBuf) -> Result<Ledger, StateError> {
        let file: LedgerFile = read_json(&path)?.unwrap_or_default();
        let pending = file.pending.into_iter().map(|u| (u.update_id, u)).collect();
        Ok(Ledger { path, offset: file.offset, pending })
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Updates left unhandled by the previous run, oldest first.
    pub fn pending(&self) -> Vec<Update> {
        self.pending.values().cloned().collect()
    }

    /// Journals a batch and returns the updates not seen before (Telegram may resend a batch
    /// whose confirmation was lost; a webhook may deliver twice).
    pub fn accept(&mut self, updates: Vec<Update>) -> Result<Vec<Update>, StateError> {
        let fresh: Vec<Update> = updates.into_iter().filter(|u| u.update_id >= self.offset).collect();
        if fresh.is_empty() {
            return Ok(fresh);
        }
        // Persist first, then commit in memory: if the write fails, the offset does not move,
        // so the next poll does not confirm updates that were never journaled.
        let mut pending = self.pending.clone();
        let mut offset = self.offset;
        for u in &fresh {
            offset = offset.max(u.update_id + 1);
            pending.insert(u.update_id, u.clone());
        }
        write_ledger(&self.path, offset, &pending)?;
        self.offset = offset;
        self.pending = pending;
        Ok(fresh)
    }

    /// Marks an update handled, durably.
    pub fn done(&mut self, update_id: i64) -> Result<(), StateError> {
        if self.pending.contains_key(&update_id) {
            let mut pending = self.pending.clone();
            pending.remove(&update_id);
            write_ledger(&self.path, self.offset, &pending)?;
            self.pending = pending;
        }
        Ok(())
    }
}

/// Small and rare (a few writes per message), so callers may hold a lock around it.
fn write_ledger(path: &Path, offset: i64, pending: &BTreeMap<i64, Update>) -> Result<(), StateError> {
    let file = LedgerFile { offset, pending: pending.values().cloned().collect() };
    write_atomic(path, &to_json(&file))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::telegram::bot_types::{Chat, Message};

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mcas-tg-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn update(id: i64) -> Update {
        let chat = Chat { id: 1, kind: "private".into() };
        let message = Message {
            message_id: id,
            chat,
            from: None,
            text: Some(format!("m{id}")),
            entities: vec![],
            reply_to_message: None,
            message_thread_id: None,
        };
        Update { update_id: id, message: Some(message) }
    }

    #[test]
    fn ledger_survives_reload_and_drops_duplicates() {
        let dir = temp_dir("ledger");
        let store = Store::open(&dir).unwrap();
        let mut l = Ledger::load(store.ledger_path()).unwrap();
        assert_eq!(l.offset(), 0);
        let fresh = l.accept(vec![update(10), update(11)]).unwrap();
        assert_eq!(fresh.len(), 2);
        l.done(10).unwrap();
        // A resent batch is not handled twice.
        assert!(l.accept(vec![update(11)]).unwrap().is_empty());

        let l2 = Ledger::load(store.ledger_path()).unwrap();
        assert_eq!(l2.offset(), 12);
        assert_eq!(l2.pending(), vec![update(11)]);
        assert!(!dir.join("updates.json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn history_is_bounded_in_pairs() {
        let mut s = ChatState::default();
        for i in 0..5 {
            s.remember(&format!("q{i}"), &format!("a{i}"), 4, 1000);
        }
        let contents: Vec<&str> = s.history.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["q3", "a3", "q4", "a4"]);
        // 8 + 24 chars > 30: the oldest pair goes, 28 chars remain.
        s.remember("qqqq", &"x".repeat(20), 10, 30);
        assert_eq!(s.history.len(), 4);
        assert_eq!(s.history[0].content, "q4");
        assert_eq!(s.history[0].role, "user");
        s.remember("q", &"y".repeat(100), 10, 30);
        assert!(s.history.is_empty(), "an exchange over the bound is not kept");
    }

    #[tokio::test]
    async fn chat_state_round_trips_and_corrupt_file_is_set_aside() {
        let dir = temp_dir("chat");
        let store = Store::open(&dir).unwrap();
        let mut s = ChatState::default();
        s.remember("hi", "hello", 10, 100);
        store.save_chat(-100, &s).await.unwrap();
        assert_eq!(store.load_chat(-100).await, s);
        std::fs::write(dir.join("chats/5.json"), b"{not json").unwrap();
        assert_eq!(store.load_chat(5).await, ChatState::default());
        assert!(dir.join("chats/5.json.corrupt").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
