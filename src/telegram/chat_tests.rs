#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::telegram::bot_types::{Chat, MessageEntity, User};

fn me() -> Me {
    Me { id: 42, username: "McasBot".into() }
}

fn allow(ids: &[i64]) -> AllowedUsers {
    AllowedUsers { all: false, ids: ids.iter().copied().collect() }
}

fn msg(kind: &str, from: i64, text: &str) -> Message {
    Message {
        message_id: 1,
        chat: Chat { id: if kind == "private" { from } else { -100 }, kind: kind.into() },
        from: Some(User { id: from, is_bot: false, username: None }),
        text: Some(text.into()),
        entities: vec![],
        reply_to_message: None,
        message_thread_id: None,
    }
}

fn entity(kind: &str, text: &str, needle: &str) -> MessageEntity {
    let byte = text.find(needle).unwrap();
    MessageEntity {
        kind: kind.into(),
        offset: text[..byte].encode_utf16().count(),
        length: needle.encode_utf16().count(),
        user: None,
    }
}

#[test]
fn private_text_is_a_question_and_commands_parse() {
    let a = allow(&[7]);
    assert_eq!(classify(&msg("private", 7, "hi there"), &me(), &a), Action::Ask("hi there".into()));
    assert_eq!(
        classify(&msg("private", 7, "/model  big-one "), &me(), &a),
        Action::Command { name: "model".into(), arg: "big-one".into() }
    );
    assert_eq!(
        classify(&msg("private", 7, "/RESET@mcasbot"), &me(), &a),
        Action::Command { name: "reset".into(), arg: String::new() }
    );
    assert_eq!(classify(&msg("private", 7, "/reset@otherbot"), &me(), &a), Action::Ignore);
}

#[test]
fn strangers_are_refused_and_star_allows_all() {
    assert_eq!(classify(&msg("private", 8, "hi"), &me(), &allow(&[7])), Action::Refuse);
    assert_eq!(classify(&msg("private", 8, "hi"), &me(), &allow(&[])), Action::Refuse);
    let all = AllowedUsers { all: true, ids: Default::default() };
    assert_eq!(classify(&msg("private", 8, "hi"), &me(), &all), Action::Ask("hi".into()));
}

#[test]
fn groups_need_a_mention_or_a_reply() {
    let a = allow(&[7]);
    assert_eq!(classify(&msg("group", 7, "hello all"), &me(), &a), Action::Ignore);
    // Not addressed: silence even for strangers.
    assert_eq!(classify(&msg("supergroup", 9, "hello"), &me(), &a), Action::Ignore);

    let text = "😀 @mcasbot what is 2+2?";
    let mut m = msg("group", 7, text);
    m.entities = vec![entity("mention", text, "@mcasbot")];
    assert_eq!(classify(&m, &me(), &a), Action::Ask("😀  what is 2+2?".into()));
    m.from = Some(User { id: 9, is_bot: false, username: None });
    assert_eq!(classify(&m, &me(), &a), Action::Refuse);

    let mut other = msg("group", 7, "@someone hi");
    other.entities = vec![entity("mention", "@someone hi", "@someone")];
    assert_eq!(classify(&other, &me(), &a), Action::Ignore);

    let mut reply = msg("group", 7, "and why?");
    let mut ours = msg("group", 42, "because");
    ours.from.as_mut().unwrap().is_bot = true;
    reply.reply_to_message = Some(Box::new(ours));
    assert_eq!(classify(&reply, &me(), &a), Action::Ask("and why?".into()));

    let text = "/reset@McasBot";
    let mut cmd = msg("group", 7, text);
    cmd.entities = vec![entity("bot_command", text, text)];
    assert!(matches!(classify(&cmd, &me(), &a), Action::Command { .. }));
    let bare = msg("group", 7, "/reset");
    assert_eq!(classify(&bare, &me(), &a), Action::Ignore);
}

#[test]
fn bots_and_non_text_are_ignored() {
    let a = allow(&[7]);
    let mut m = msg("private", 7, "hi");
    m.from.as_mut().unwrap().is_bot = true;
    assert_eq!(classify(&m, &me(), &a), Action::Ignore);
    let mut photo = msg("private", 7, "");
    photo.text = None;
    assert_eq!(classify(&photo, &me(), &a), Action::Ignore);
    assert!(matches!(classify(&msg("private", 7, "@McasBot"), &me(), &a), Action::Command { .. }));
}
