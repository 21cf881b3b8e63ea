//! A fake Telegram Bot API server speaking the real JSON: `/bot<token>/<method>`, `{"ok":..}`
//! envelopes, long-polling `getUpdates` that forgets updates below the offset, message ids,
//! and Telegram's errors (401 bad token, 400 empty/too long/not modified, 404 unknown method).
//! Tests queue updates, inject errors, and read back every call with its arrival time.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

pub const TOKEN: &str = "4242:AAtest-SECRET-token";
pub const BOT_ID: i64 = 4242;
pub const BOT_USERNAME: &str = "mcas_test_bot";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    pub at: Instant,
}

impl Call {
    pub fn chat(&self) -> i64 {
        self.body["chat_id"].as_i64().unwrap_or(0)
    }
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or("")
    }
}

struct Injected {
    chat: Option<i64>,
    status: u16,
    body: Value,
}

#[derive(Default)]
pub struct State {
    updates: Vec<Value>,
    next_update_id: i64,
    next_message_id: i64,
    pub calls: Vec<Call>,
    /// Offsets of every getUpdates call, in order.
    pub offsets: Vec<i64>,
    injected: HashMap<String, VecDeque<Injected>>,
    drafts_unsupported: bool,
    /// When set, confirmed updates are kept and resent, as if confirmations were lost.
    keep_confirmed: bool,
    texts: HashMap<(i64, i64), String>,
}

impl State {
    pub fn calls_to(&self, method: &str, chat: i64) -> Vec<Call> {
        self.calls.iter().filter(|c| c.method == method && c.chat() == chat).cloned().collect()
    }
}

pub struct FakeBot {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
}

impl FakeBot {
    pub async fn start() -> FakeBot {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { next_update_id: 1000, next_message_id: 1, ..Default::default() }));
        let (changed, _) = watch::channel(0u64);
        let bot = FakeBot { addr, state, changed };
        let (state, changed) = (bot.state.clone(), bot.changed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, changed) = (state.clone(), changed.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (state, changed) = (state.clone(), changed.clone());
                        async move { Ok::<_, Infallible>(serve(req, state, changed).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        bot
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap());
        self.bump();
        out
    }

    /// Queues a `message` update; returns (update_id, message_id).
    pub fn push_message(&self, mut message: Value) -> (i64, i64) {
        self.with(|s| {
            let (uid, mid) = (s.next_update_id, s.next_message_id);
            s.next_update_id += 1;
            s.next_message_id += 1;
            message["message_id"] = json!(mid);
            message["date"] = json!(1_700_000_000);
            s.updates.push(json!({ "update_id": uid, "message": message }));
            (uid, mid)
        })
    }

    pub fn push_private(&self, user: i64, text: &str) -> (i64, i64) {
        self.push_message(json!({
            "chat": { "id": user, "type": "private", "first_name": "U" },
            "from": { "id": user, "is_bot": false, "first_name": "U" },
            "text": text,
        }))
    }

    /// A group message; `extra` is merged in (entities, reply_to_message).
    pub fn push_group(&self, chat: i64, user: i64, text: &str, extra: Value) -> (i64, i64) {
        let mut m = json!({
            "chat": { "id": chat, "type": "supergroup", "title": "G" },
            "from": { "id": user, "is_bot": false, "first_name": "U" },
            "text": text,
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        self.push_message(m)
    }

    /// The next call of `method` (to `chat`, if given) answers with this error envelope.
    pub fn inject_error(
        &self,
        method: &str,
        chat: Option<i64>,
        code: u16,
        description: &str,
        retry_after: Option<u64>,
    ) {
        let mut body = json!({ "ok": false, "error_code": code, "description": description });
        if let Some(r) = retry_after {
            body["parameters"] = json!({ "retry_after": r });
        }
        self.with(|s| {
            s.injected.entry(method.to_string()).or_default().push_back(Injected { chat, status: code, body })
        });
    }

    pub fn set_drafts_unsupported(&self) {
        self.with(|s| s.drafts_unsupported = true);
    }

    pub fn set_keep_confirmed(&self) {
        self.with(|s| s.keep_confirmed = true);
    }

    pub fn calls_to(&self, method: &str, chat: i64) -> Vec<Call> {
        self.with(|s| s.calls_to(method, chat))
    }

    /// Waits until `f` returns `Some`, re-checking on every call the fake receives.
    pub async fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&State) -> Option<T>) -> T {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = f(&self.state.lock().unwrap()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let calls: Vec<String> =
                    self.state.lock().unwrap().calls.iter().map(|c| format!("{} {}", c.method, c.body)).collect();
                panic!("timed out waiting for {what}; calls so far:\n{}", calls.join("\n"));
            }
        }
    }

    /// Waits for the `n`-th `sendMessage` to `chat` and returns all so far.
    pub async fn wait_sent(&self, chat: i64, n: usize) -> Vec<Call> {
        self.wait_for(&format!("{n} sendMessage to {chat}"), |s| {
            let sent = s.calls_to("sendMessage", chat);
            (sent.len() >= n).then_some(sent)
        })
        .await
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

fn ok(result: Value) -> Response<Full<Bytes>> {
    reply(200, json!({ "ok": true, "result": result }))
}

fn bad_request(description: &str) -> Response<Full<Bytes>> {
    reply(400, json!({ "ok": false, "error_code": 400, "description": format!("Bad Request: {description}") }))
}

async fn serve(req: Request<Incoming>, state: Arc<Mutex<State>>, changed: watch::Sender<u64>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(json!({}));
    let Some((token, method)) = path.strip_prefix("/bot").and_then(|p| p.split_once('/')) else {
        return reply(404, json!({ "ok": false, "error_code": 404, "description": "Not Found" }));
    };
    if token != TOKEN {
        return reply(401, json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }));
    }
    let method = method.to_string();
    let injected = {
        let mut s = state.lock().unwrap();
        s.calls.push(Call { method: method.clone(), body: body.clone(), at: Instant::now() });
        let chat = body["chat_id"].as_i64();
        let queue = s.injected.entry(method.clone()).or_default();
        match queue.iter().position(|i| i.chat.is_none() || i.chat == chat) {
            Some(pos) => queue.remove(pos),
            None => None,
        }
    };
    changed.send_modify(|v| *v += 1);
    if let Some(inj) = injected {
        return reply(inj.status, inj.body);
    }
    match method.as_str() {
        "getMe" => ok(json!({ "id": BOT_ID, "is_bot": true, "first_name": "MCAS", "username": BOT_USERNAME })),
        "deleteWebhook" | "setWebhook" | "sendChatAction" => ok(json!(true)),
        "getUpdates" => get_updates(&body, &state, &changed).await,
        "sendMessage" | "editMessageText" => message(&method, &body, &state, &changed),
        "sendMessageDraft" => {
            let s = state.lock().unwrap();
            if s.drafts_unsupported {
                reply(404, json!({ "ok": false, "error_code": 404, "description": "Not Found" }))
            } else if body["chat_id"].as_i64().unwrap_or(0) < 0 {
                bad_request("TEXTDRAFT_PEER_INVALID")
            } else {
                ok(json!(true))
            }
        }
        _ => reply(404, json!({ "ok": false, "error_code": 404, "description": "Not Found" })),
    }
}

async fn get_updates(body: &Value, state: &Mutex<State>, changed: &watch::Sender<u64>) -> Response<Full<Bytes>> {
    assert_eq!(body["allowed_updates"], json!(["message"]), "allowed_updates must be explicit");
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = changed.subscribe();
    state.lock().unwrap().offsets.push(offset);
    loop {
        {
            let mut s = state.lock().unwrap();
            if !s.keep_confirmed {
                // Telegram forgets everything below the offset: it is confirmed.
                s.updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
            }
            let ready: Vec<Value> = s
                .updates
                .iter()
                .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= offset)
                .take(100)
                .cloned()
                .collect();
            if !ready.is_empty() {
                return ok(json!(ready));
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return ok(json!([]));
        }
    }
}

fn message(method: &str, body: &Value, state: &Mutex<State>, changed: &watch::Sender<u64>) -> Response<Full<Bytes>> {
    let text = body["text"].as_str().unwrap_or("");
    let chat = body["chat_id"].as_i64().unwrap_or(0);
    if text.trim().is_empty() {
        return bad_request("message text is empty");
    }
    // Telegram's limit is on the text after entity parsing.
    let visible = if body["parse_mode"] == "HTML" { html_to_text(text) } else { text.to_string() };
    if visible.encode_utf16().count() > 4096 {
        return bad_request("message is too long");
    }
    let mut s = state.lock().unwrap();
    let id = if method == "sendMessage" {
        let id = s.next_message_id;
        s.next_message_id += 1;
        id
    } else {
        let id = body["message_id"].as_i64().unwrap_or(0);
        match s.texts.get(&(chat, id)) {
            None => return bad_request("message to edit not found"),
            Some(old) if old == text && body["parse_mode"].is_null() => {
                return bad_request(
                    "message is not modified: specified new message content and reply markup are exactly the same",
                )
            }
            Some(_) => id,
        }
    };
    s.texts.insert((chat, id), text.to_string());
    drop(s);
    changed.send_modify(|v| *v += 1);
    let kind = if chat > 0 { "private" } else { "supergroup" };
    ok(json!({
        "message_id": id, "date": 1_700_000_000, "text": text,
        "chat": { "id": chat, "type": kind },
        "from": { "id": BOT_ID, "is_bot": true, "first_name": "MCAS", "username": BOT_USERNAME },
    }))
}

/// What Telegram's HTML parser leaves visible: tags removed, the three entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match (c, in_tag) {
            ('<', _) => in_tag = true,
            ('>', true) => in_tag = false,
            (c, false) => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}
