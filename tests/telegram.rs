//! mcas-telegram end to end: the built binary against a fake Bot API (real Bot API JSON,
//! long polling, injected 429/400/404) and an OpenAI-compatible streaming upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod fake_bot;
pub(crate) mod fake_llm;
pub(crate) mod harness;

use std::time::Duration;

use serde_json::{json, Value};

use fake_bot::{html_to_text, FakeBot, BOT_ID, BOT_USERNAME, TOKEN};
use fake_llm::{answer_to, FakeLlm, KEY};
use harness::{free_port, Runner, Setup, TempDir, ALICE, BOB, STRANGER};

/// Fakes plus a runner with default settings (`stream_mode: draft`).
struct World {
    bot: FakeBot,
    llm: FakeLlm,
    dir: TempDir,
}

impl World {
    async fn new() -> World {
        World { bot: FakeBot::start().await, llm: FakeLlm::start().await, dir: TempDir::new() }
    }

    fn setup<'a>(&'a self, telegram_yaml: &'a str) -> Setup<'a> {
        Setup { bot: &self.bot, gateway_url: self.llm.url(), dir: &self.dir.0, telegram_yaml, args: &[], env: &[] }
    }

    fn runner(&self) -> Runner {
        Runner::spawn(&self.setup(""))
    }
}

fn full_answer(question: &str) -> String {
    answer_to(question).0.concat().trim().to_string()
}

fn gaps(calls: &[fake_bot::Call]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1].at - w[0].at).collect()
}

#[tokio::test]
async fn private_message_gets_a_streamed_finalised_answer() {
    let w = World::new().await;
    let runner = w.runner();
    let (_, mid) = w.bot.push_private(ALICE, "slow: tell me a story");
    let sent = w.bot.wait_sent(ALICE, 1).await;

    let typing = w.bot.calls_to("sendChatAction", ALICE);
    assert!(!typing.is_empty() && typing[0].body["action"] == "typing");
    let drafts = w.bot.calls_to("sendMessageDraft", ALICE);
    assert!(drafts.len() >= 2, "progressive drafts expected: {drafts:?}");
    assert!(drafts.iter().all(|d| d.body["draft_id"] == json!(mid)));
    let lens: Vec<usize> = drafts.iter().map(|d| d.text().len()).collect();
    assert!(lens.windows(2).all(|l| l[0] < l[1]), "drafts grow: {lens:?}");
    assert!(gaps(&drafts).iter().all(|g| *g >= Duration::from_millis(900)), "≤ 1 preview/s: {:?}", gaps(&drafts));
    assert!(typing[0].at <= drafts[0].at);

    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text(), full_answer("slow: tell me a story"));
    assert_eq!(sent[0].body["parse_mode"], "HTML");
    assert!(sent[0].body.get("reply_parameters").is_none(), "no reply quote in private chats");
    assert!(w.bot.calls_to("editMessageText", ALICE).is_empty());

    runner.wait_handled(1).await;
    let (code, status) = runner.status().await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["telegram"]["reachable"], true);
    assert_eq!(status["gateway"]["reachable"], true);
    assert!(status["telegram"]["last_poll"].is_u64());
    // What the gateway got: system prompt, then the question; streamed; default model.
    let req = &w.llm.requests()[0];
    assert_eq!(req["model"], "sim-small");
    assert_eq!(req["messages"][0], json!({"role": "system", "content": "You are a test bot."}));
    assert_eq!(req["messages"][1], json!({"role": "user", "content": "slow: tell me a story"}));
}

#[tokio::test]
async fn without_drafts_the_reply_is_sent_then_edited_at_most_once_a_second() {
    let w = World::new().await;
    w.bot.set_drafts_unsupported();
    let runner = w.runner();
    w.bot.push_private(ALICE, "slow one");
    let answer = full_answer("slow one");
    let edits = w
        .bot
        .wait_for("final edit", |s| {
            let edits = s.calls_to("editMessageText", ALICE);
            edits.last().is_some_and(|e| e.body["parse_mode"] == "HTML").then_some(edits)
        })
        .await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert_eq!(sent.len(), 1, "one message, then edits");
    assert!(sent[0].body.get("parse_mode").is_none(), "previews are plain text");
    let last = edits.last().unwrap();
    assert_eq!(last.text(), answer);
    assert!(edits.len() >= 2, "{edits:?}");
    let mut all = vec![sent[0].clone()];
    all.extend(edits.iter().cloned());
    assert!(gaps(&all).iter().all(|g| *g >= Duration::from_millis(900)), "{:?}", gaps(&all));
    runner.wait_handled(1).await;

    // The fallback lasts for the process: no second draft attempt.
    w.bot.push_private(ALICE, "again");
    runner.wait_handled(2).await;
    assert_eq!(w.bot.calls_to("sendMessageDraft", ALICE).len(), 1);
}

#[tokio::test]
async fn a_long_answer_is_split_at_paragraphs() {
    let w = World::new().await;
    let runner = w.runner();
    w.bot.push_private(ALICE, "a long one please");
    runner.wait_handled(1).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert!(sent.len() >= 3, "{} parts", sent.len());
    for part in &sent {
        assert!(html_to_text(part.text()).encode_utf16().count() <= 4096);
        assert!(part.text().starts_with("Paragraph ") && part.text().ends_with('.'), "cut inside a paragraph");
    }
    let joined: Vec<String> = sent.iter().map(|c| c.text().to_string()).collect();
    assert_eq!(joined.join("\n\n"), full_answer("a long one please"));
}

#[tokio::test]
async fn reset_really_clears_the_history() {
    let w = World::new().await;
    let runner = w.runner();
    w.bot.push_private(ALICE, "first question");
    w.bot.push_private(ALICE, "second question");
    runner.wait_handled(2).await;
    let second = &w.llm.requests()[1]["messages"];
    assert_eq!(second[1]["content"], "first question");
    assert_eq!(second[2]["content"], full_answer("first question"));
    assert_eq!(second[3]["content"], "second question");

    w.bot.push_private(ALICE, "/reset");
    runner.wait_handled(3).await;
    assert!(w.bot.calls_to("sendMessage", ALICE).last().unwrap().text().contains("forgot"));
    let file: Value =
        serde_json::from_slice(&std::fs::read(w.dir.0.join(format!("state/chats/{ALICE}.json"))).unwrap()).unwrap();
    assert_eq!(file["history"], json!([]), "cleared on disk");

    w.bot.push_private(ALICE, "third question");
    runner.wait_handled(4).await;
    let third = &w.llm.requests()[2]["messages"];
    assert_eq!(third.as_array().unwrap().len(), 2, "system + question only: {third}");
    assert_eq!(third[1]["content"], "third question");
}

#[tokio::test]
async fn a_restart_neither_repeats_nor_loses_updates() {
    let w = World::new().await;
    // As if confirmations never reached Telegram: only the runner's own offset prevents repeats.
    w.bot.set_keep_confirmed();
    let (first_id, _) = w.bot.push_private(ALICE, "before restart");
    let runner = w.runner();
    runner.wait_handled(1).await;
    drop(runner); // SIGKILL: no graceful shutdown

    let (second_id, _) = w.bot.push_private(ALICE, "while down");
    let polls_before = w.bot.with(|s| s.offsets.len());
    let runner = w.runner();
    runner.wait_handled(1).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    let texts: Vec<&str> = sent.iter().map(|c| c.text()).collect();
    assert_eq!(texts, [full_answer("before restart"), full_answer("while down")]);
    let first_poll_after_restart = w.bot.with(|s| s.offsets[polls_before]);
    assert_eq!(first_poll_after_restart, first_id + 1);
    assert_eq!(second_id, first_id + 1);
    assert_eq!(w.llm.requests().len(), 2, "the handled update was not asked again");
}

#[tokio::test]
async fn an_update_in_flight_at_a_crash_is_answered_after_restart() {
    let w = World::new().await;
    w.bot.set_drafts_unsupported();
    let runner = w.runner();
    w.bot.push_private(ALICE, "slow and interrupted");
    // Kill mid-stream: the preview message exists, the answer is not finished.
    w.bot.wait_sent(ALICE, 1).await;
    drop(runner);
    let runner = w.runner();
    runner.wait_handled(1).await;
    let finals: Vec<String> = w
        .bot
        .calls_to("editMessageText", ALICE)
        .iter()
        .filter(|c| c.body["parse_mode"] == "HTML")
        .map(|c| c.text().to_string())
        .collect();
    assert_eq!(finals, [full_answer("slow and interrupted")]);
}

#[tokio::test]
async fn flood_control_retry_after_is_honoured_and_other_chats_proceed() {
    let w = World::new().await;
    w.bot.inject_error("sendMessage", Some(ALICE), 429, "Too Many Requests: retry after 2", Some(2));
    let runner = w.runner();
    w.bot.push_private(ALICE, "hello");
    // Bob writes once Alice's final message has been refused with 429.
    let limited = w.bot.wait_sent(ALICE, 1).await.remove(0);
    w.bot.push_private(BOB, "hi from bob");
    let retried = w.bot.wait_sent(ALICE, 2).await.remove(1);
    assert!(retried.at - limited.at >= Duration::from_millis(1950), "waited {:?}", retried.at - limited.at);
    assert_eq!(retried.text(), full_answer("hello"));
    let bob = w.bot.calls_to("sendMessage", BOB);
    assert_eq!(bob.len(), 1, "Bob's answer did not wait for Alice's flood wait");
    assert!(bob[0].at < retried.at);
    runner.wait_handled(2).await;
}

#[tokio::test]
async fn groups_answer_only_mentions_and_replies() {
    let w = World::new().await;
    let runner = w.runner();
    let group = -1001;
    w.bot.push_group(group, ALICE, "just chatting", json!({}));
    runner.wait_handled(1).await;
    assert!(w.bot.with(|s| s.calls.iter().all(|c| c.chat() != group)), "ignored silently");

    let text = format!("@{BOT_USERNAME} what is up");
    let entities = json!({"entities": [{"type": "mention", "offset": 0, "length": BOT_USERNAME.len() + 1}]});
    let (_, asked) = w.bot.push_group(group, ALICE, &text, entities);
    runner.wait_handled(2).await;
    let sent = w.bot.calls_to("sendMessage", group);
    assert_eq!(sent[0].body["reply_parameters"]["message_id"], json!(asked));
    assert!(w.bot.calls_to("sendMessageDraft", group).is_empty(), "no drafts in groups");
    let last = w.bot.calls_to("editMessageText", group).last().map(|c| c.text().to_string());
    let shown = last.unwrap_or_else(|| sent[0].text().to_string());
    assert_eq!(shown, full_answer("what is up"));

    let ours = json!({"reply_to_message": {"message_id": 1, "chat": {"id": group, "type": "supergroup"},
        "from": {"id": BOT_ID, "is_bot": true, "first_name": "MCAS"}, "text": "earlier"}});
    w.bot.push_group(group, BOB, "and then?", ours);
    runner.wait_handled(3).await;
    assert_eq!(
        w.llm.requests().last().unwrap()["messages"].as_array().unwrap().last().unwrap()["content"],
        "and then?"
    );
}

#[tokio::test]
async fn a_user_not_on_the_allowlist_is_refused_once() {
    let w = World::new().await;
    let runner = w.runner();
    w.bot.push_private(STRANGER, "hello?");
    w.bot.push_private(STRANGER, "hello??");
    runner.wait_handled(2).await;
    let sent = w.bot.calls_to("sendMessage", STRANGER);
    assert_eq!(sent.len(), 1, "one polite refusal");
    assert!(sent[0].text().contains("allowlist") && sent[0].text().contains(&STRANGER.to_string()));
    assert!(w.llm.requests().is_empty(), "nothing reached the gateway");
    assert!(runner.metrics().await.contains("mcas_telegram_updates_total{action=\"refused\"} 2"));
}

#[tokio::test]
async fn gateway_down_gives_a_clear_message_and_status_503() {
    let w = World::new().await;
    let setup = Setup { gateway_url: format!("http://127.0.0.1:{}", free_port()), ..w.setup("") };
    let runner = Runner::spawn(&setup);
    w.bot.push_private(ALICE, "anyone there?");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert!(sent[0].text().contains("unavailable"), "{}", sent[0].text());
    let (code, status) = runner.wait_status("gateway unreachable", |_, v| v["gateway"]["reachable"] == false).await;
    assert_eq!(code, 503, "{status}");
    assert!(status["problems"].to_string().contains("gateway unreachable"));
    let everything = format!("{status}{}{}", runner.metrics().await, runner.log());
    let chat: Vec<String> = w.bot.with(|s| s.calls.iter().map(|c| c.body.to_string()).collect());
    for secret in [TOKEN, KEY] {
        assert!(!everything.contains(secret), "secret leaked to status/metrics/log");
        assert!(!chat.concat().contains(secret), "secret leaked to the chat");
    }
    assert!(!chat.concat().contains("panicked") && !chat.concat().contains("127.0.0.1"));
}

#[tokio::test]
async fn gateway_rate_limit_tells_the_user_when_to_retry() {
    let w = World::new().await;
    w.llm.set_rate_limited(7);
    let _runner = w.runner();
    w.bot.push_private(ALICE, "quick");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert!(sent[0].text().contains("try again in 7 seconds"), "{}", sent[0].text());
}

#[tokio::test]
async fn rejected_html_is_resent_as_plain_text() {
    let w = World::new().await;
    w.bot.inject_error("sendMessage", Some(ALICE), 400, "Bad Request: can't parse entities: Unexpected end tag", None);
    let runner = w.runner();
    w.bot.push_private(ALICE, "use `a<b` here");
    runner.wait_handled(1).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].body["parse_mode"], "HTML");
    assert_eq!(sent[0].text(), "You said: use <code>a&lt;b</code> here.");
    assert!(sent[1].body.get("parse_mode").is_none());
    assert_eq!(sent[1].text(), "You said: use `a<b` here.");
}

#[tokio::test]
async fn model_command_offers_only_listed_models() {
    let w = World::new().await;
    let runner = w.runner();
    for text in ["/model", "/model gpt-99", "/model sim-large", "which model?"] {
        w.bot.push_private(ALICE, text);
    }
    runner.wait_handled(4).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert!(sent[0].text().contains("Current model: sim-small") && sent[0].text().contains("sim-large"));
    assert!(sent[1].text().contains("There is no model gpt-99"));
    assert!(sent[2].text().contains("Model set to sim-large"));
    assert_eq!(w.llm.requests().last().unwrap()["model"], "sim-large");
}

#[tokio::test]
async fn webhook_mode_checks_the_secret_token() {
    let w = World::new().await;
    let port = free_port();
    let yaml = format!("webhook:\n  listen: 127.0.0.1:{port}\n  path: /hook\n  url: https://bot.example/hook");
    let setup =
        Setup { args: &["--webhook"], env: &[("MCAS_TELEGRAM_WEBHOOK_SECRET", "hook-secret_1")], ..w.setup(&yaml) };
    let runner = Runner::spawn(&setup);
    runner.wait_status("up", |_, v| v["mode"] == "webhook").await;
    let hook = w.bot.wait_for("setWebhook", |s| s.calls.iter().find(|c| c.method == "setWebhook").cloned()).await;
    assert_eq!(hook.body["secret_token"], "hook-secret_1");
    assert_eq!(hook.body["allowed_updates"], json!(["message"]));

    let update = json!({"update_id": 5, "message": {"message_id": 9, "date": 0, "text": "via hook",
        "chat": {"id": ALICE, "type": "private"}, "from": {"id": ALICE, "is_bot": false, "first_name": "A"}}});
    let post = |secret: Option<&'static str>| {
        let req = reqwest::Client::new().post(format!("http://127.0.0.1:{port}/hook")).json(&update);
        let req = match secret {
            Some(s) => req.header("X-Telegram-Bot-Api-Secret-Token", s),
            None => req,
        };
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("wrong")).await, 401);
    assert_eq!(post(Some("hook-secret_1")).await, 200);
    assert_eq!(post(Some("hook-secret_1")).await, 200, "a redelivery is accepted ...");
    runner.wait_handled(1).await;
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert_eq!(sent.len(), 1, "... but not answered twice");
    assert_eq!(sent[0].text(), full_answer("via hook"));
    assert!(w.bot.with(|s| s.offsets.is_empty()), "no polling in webhook mode");
}

#[tokio::test]
async fn status_and_metrics_report_without_secrets() {
    let w = World::new().await;
    let runner = w.runner();
    w.bot.push_private(ALICE, "count me");
    runner.wait_handled(1).await;
    let (code, status) = runner.status().await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["messages_handled"], 1);
    assert_eq!(status["mode"], "polling");
    let metrics = runner.metrics().await;
    for line in [
        "mcas_telegram_messages_handled_total 1",
        "mcas_telegram_updates_total{action=\"ask\"} 1",
        "mcas_telegram_completions_total{outcome=\"ok\"} 1",
        "mcas_telegram_first_token_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(!metrics.contains(TOKEN) && !status.to_string().contains(TOKEN));
}

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcas-telegram"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MCAS_")) {
        cmd.env_remove(k);
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_reference_config_passes_check_and_errors_name_the_field() {
    let env = [("MCAS_TELEGRAM_BOT_TOKEN", TOKEN), ("MCAS_GATEWAY_KEY", KEY), ("MCAS_TELEGRAM_WEBHOOK_SECRET", "s_1")];
    let (code, out) = check(&["--config", "conf/telegram.yaml", "--check"], &env);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&["--config", "conf/telegram.yaml", "--check", "--webhook"], &env);
    assert_eq!(code, 0, "{out}");

    let (code, out) = check(&["--config", "conf/telegram.yaml", "--check"], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("telegram.bot_token") && out.contains("MCAS_TELEGRAM_BOT_TOKEN"), "{out}");

    let dir = TempDir::new();
    let bad = dir.0.join("bad.yaml");
    std::fs::write(&bad, "telegram:\n  pol_timeout: 30s\n").unwrap();
    let (code, out) = check(&["--config", bad.to_str().unwrap(), "--check"], &env);
    assert_eq!(code, 1);
    assert!(out.contains("pol_timeout") && out.contains("telegram"), "{out}");
    assert!(!out.contains(TOKEN) && !out.contains(KEY));
}

// ---- Against the real upstream simulator (`mcas-sim`, answers "tok1 tok2 …") ----

/// The runner with `mcas-sim` as its OpenAI-compatible upstream.
async fn with_sim(w: &World, sim_args: &[&str]) -> (crate::common::Proc, Runner) {
    let mut args = vec!["--api-key", KEY, "--models", "sim-small,sim-large"];
    args.extend_from_slice(sim_args);
    let sim = crate::common::spawn_sim(&args).await;
    let setup = Setup { gateway_url: sim.url(""), ..w.setup("") };
    let runner = Runner::spawn(&setup);
    (sim, runner)
}

fn sim_answer(tokens: usize) -> String {
    (1..=tokens).map(|i| format!("tok{i} ")).collect::<String>().trim().to_string()
}

#[tokio::test]
async fn streams_an_answer_from_mcas_sim() {
    let w = World::new().await;
    let (_sim, runner) = with_sim(&w, &["--tokens", "30", "--itl-ms", "100"]).await;
    w.bot.push_private(ALICE, "hello sim");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0].text(), sim_answer(30));
    let drafts = w.bot.calls_to("sendMessageDraft", ALICE);
    assert!(drafts.len() >= 2, "{drafts:?}");
    for d in &drafts {
        assert!(sim_answer(30).starts_with(d.text()), "a draft is a prefix of the answer: {}", d.text());
    }
    assert!(gaps(&drafts).iter().all(|g| *g >= Duration::from_millis(900)), "{:?}", gaps(&drafts));
    runner.wait_handled(1).await;
    assert_eq!(runner.status().await.0, 200);
}

#[tokio::test]
async fn a_long_mcas_sim_answer_is_split_between_words() {
    let w = World::new().await;
    let (_sim, runner) = with_sim(&w, &["--tokens", "2500", "--itl-ms", "0"]).await;
    w.bot.push_private(ALICE, "say a lot");
    runner.wait_handled(1).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert!(sent.len() >= 4, "{} parts", sent.len());
    assert!(sent.iter().all(|c| c.text().encode_utf16().count() <= 4096));
    let parts: Vec<&str> = sent.iter().map(|c| c.text()).collect();
    assert_eq!(parts.join(" "), sim_answer(2500), "no word cut, none lost");
}

#[tokio::test]
async fn a_stream_cut_by_mcas_sim_is_reported_and_not_remembered() {
    let w = World::new().await;
    let (_sim, runner) = with_sim(&w, &["--tokens", "20", "--close-rate", "1"]).await;
    w.bot.push_private(ALICE, "first");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert!(sent[0].text().starts_with("tok1 tok2"), "{}", sent[0].text());
    assert!(sent[0].text().contains("the answer was interrupted"), "{}", sent[0].text());
    runner.wait_handled(1).await;
    let file = w.dir.0.join(format!("state/chats/{ALICE}.json"));
    assert!(!file.exists(), "a broken exchange is not kept in the history");
}

// ---- Through the real gateway in front of mcas-sim ----

const PROVIDER_KEY: &str = "provider-key-for-sim";

/// mcas-sim behind mcas-gateway (runner key `KEY`, provider key `PROVIDER_KEY`), and the
/// runner pointed at the gateway with `runner_key`.
async fn with_gateway(
    w: &World,
    sim_args: &[&str],
    runner_key: &str,
) -> (crate::common::Proc, crate::common::gateway::Gw, Runner) {
    use crate::common::gateway::{key_yaml, provider_yaml, spawn_gateway};
    let mut args = vec!["--api-key", PROVIDER_KEY, "--models", "sim-small,sim-large"];
    args.extend_from_slice(sim_args);
    let sim = crate::common::spawn_sim(&args).await;
    let rest = format!("{}{}", key_yaml("tg", KEY), provider_yaml("vllm", &sim.url("/v1"), PROVIDER_KEY));
    let gw = spawn_gateway("", &rest, &[]).await;
    let env = [("MCAS_GATEWAY_KEY", runner_key)];
    let setup = Setup { gateway_url: gw.url(""), env: &env, ..w.setup("") };
    let runner = Runner::spawn(&setup);
    (sim, gw, runner)
}

#[tokio::test]
async fn answers_through_the_gateway_in_front_of_mcas_sim() {
    let w = World::new().await;
    let (_sim, _gw, runner) = with_gateway(&w, &["--tokens", "25", "--itl-ms", "100"], KEY).await;
    w.bot.push_private(ALICE, "hello gateway");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0].text(), sim_answer(25));
    let drafts = w.bot.calls_to("sendMessageDraft", ALICE);
    assert!(drafts.len() >= 2, "streamed through the gateway: {drafts:?}");
    assert!(drafts.iter().all(|d| sim_answer(25).starts_with(d.text())));

    // /model lists what the gateway lists for this key, and switching works end to end.
    w.bot.push_private(ALICE, "/model sim-large");
    w.bot.push_private(ALICE, "/reset");
    w.bot.push_private(ALICE, "again");
    runner.wait_handled(4).await;
    let sent = w.bot.calls_to("sendMessage", ALICE);
    assert!(sent[1].text().contains("Model set to sim-large"), "{}", sent[1].text());
    assert_eq!(sent[3].text(), sim_answer(25));
    let (code, status) = runner.status().await;
    assert_eq!(code, 200, "{status}");
}

#[tokio::test]
async fn a_key_the_gateway_refuses_gives_an_apology_and_status_503() {
    let w = World::new().await;
    let (_sim, _gw, runner) = with_gateway(&w, &["--tokens", "5"], "wrong-key-SECRET").await;
    w.bot.push_private(ALICE, "hello?");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert!(sent[0].text().starts_with("Sorry, I can't reach the model"), "{}", sent[0].text());
    let (code, status) = runner.wait_status("gateway refused", |_, v| v["gateway"]["reachable"] == false).await;
    assert_eq!(code, 503, "{status}");
    let log = runner.log();
    assert!(log.contains("gateway refused the key (401)"), "a log line says why");
    let everything = format!("{status}{log}{}", sent[0].body);
    assert!(!everything.contains("wrong-key-SECRET") && !everything.contains(TOKEN));
}

/// SSE lines may end with a bare CR. The gateway must still find the usage (the runner did
/// not ask for it: the gateway adds `include_usage`, counts the tokens and removes the extra
/// event) and the runner must still read the answer (it split lines at LF only before).
#[tokio::test]
async fn a_bare_cr_stream_is_answered_and_its_tokens_counted() {
    let w = World::new().await;
    let (_sim, gw, runner) = with_gateway(&w, &["--tokens", "12", "--itl-ms", "20", "--line-ending", "cr"], KEY).await;
    w.bot.push_private(ALICE, "hello with carriage returns");
    let sent = w.bot.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0].text(), sim_answer(12));
    runner.wait_handled(1).await;
    let want = "mcas_tokens_total{key=\"tg\",kind=\"completion\",model=\"sim-small\"} 12";
    let m = gw.metrics_with(want).await;
    assert!(m.contains(want), "{m}");
    assert!(m.contains("mcas_tokens_total{key=\"tg\",kind=\"prompt\",model=\"sim-small\"}"), "{m}");
}
