//! The few Bot API objects the runner reads. Unknown fields are ignored on purpose: Telegram
//! adds fields with every API version. They serialize too, because unhandled updates are
//! journaled in the state directory.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub update_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: i64,
    pub chat: Chat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<MessageEntity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_message: Option<Box<Message>>,
    /// Forum topic; replies go to the same topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub id: i64,
    /// "private", "group", "supergroup" or "channel".
    #[serde(rename = "type")]
    pub kind: String,
}

impl Chat {
    pub fn is_private(&self) -> bool {
        self.kind == "private"
    }

    pub fn is_group(&self) -> bool {
        self.kind == "group" || self.kind == "supergroup"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEntity {
    /// "mention", "text_mention", "bot_command", ...
    #[serde(rename = "type")]
    pub kind: String,
    /// In UTF-16 code units, as Telegram counts.
    pub offset: usize,
    pub length: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

impl MessageEntity {
    /// The entity's text; `None` if the offsets do not fit the text.
    pub fn text_in(&self, text: &str) -> Option<String> {
        let units: Vec<u16> = text.encode_utf16().collect();
        let slice = units.get(self.offset..self.offset.checked_add(self.length)?)?;
        String::from_utf16(slice).ok()
    }
}

/// The `{"ok": ..}` envelope of every Bot API answer.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<T> {
    pub ok: bool,
    pub result: Option<T>,
    pub error_code: Option<i64>,
    pub description: Option<String>,
    pub parameters: Option<ResponseParameters>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ResponseParameters {
    pub retry_after: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn entity_offsets_are_utf16() {
        // The emoji takes two UTF-16 units, so the mention starts at 3, not 2.
        let text = "😀 @bot hi";
        let e = MessageEntity { kind: "mention".into(), offset: 3, length: 4, user: None };
        assert_eq!(e.text_in(text).as_deref(), Some("@bot"));
        let bad = MessageEntity { offset: 50, ..e };
        assert_eq!(bad.text_in(text), None);
    }

    #[test]
    fn update_ignores_unknown_fields() {
        let u: Update = serde_json::from_str(
            r#"{"update_id":7,"message":{"message_id":1,"date":0,"chat":{"id":-5,"type":"group","title":"t"},
               "from":{"id":9,"is_bot":false,"first_name":"A"},"text":"hi"}}"#,
        )
        .unwrap();
        let m = u.message.unwrap();
        assert!(m.chat.is_group());
        assert_eq!(m.from.map(|f| f.id), Some(9));
    }
}
