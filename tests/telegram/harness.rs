//! Spawning `mcas-telegram` for tests: environment passed to the child only (the test
//! process's own environment is never changed, and inherited `MCAS_*` variables are removed),
//! ports from the shared harness, the child killed on drop and its log printed if the test
//! failed. Unlike `common::spawn`, it writes the runner's YAML and knows `/status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::fake_bot::{FakeBot, TOKEN};
use super::fake_llm::KEY;
pub use crate::common::free_port;

/// The two users on the allowlist in every test.
pub const ALICE: i64 = 111;
pub const BOB: i64 = 222;
pub const STRANGER: i64 = 999;

/// Every variable the runner reads; removed from the child's inherited environment.
const VARS: &[&str] = &[
    "MCAS_TELEGRAM_BOT_TOKEN",
    "MCAS_GATEWAY_URL",
    "MCAS_GATEWAY_KEY",
    "MCAS_TELEGRAM_MODEL",
    "MCAS_TELEGRAM_API_URL",
    "MCAS_TELEGRAM_ALLOWED_USERS",
    "MCAS_TELEGRAM_STATE_DIR",
    "MCAS_TELEGRAM_STATUS_LISTEN",
    "MCAS_TELEGRAM_WEBHOOK_SECRET",
];

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("mcas-tg-it-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings a test needs on top of the defaults.
pub struct Setup<'a> {
    pub bot: &'a FakeBot,
    pub gateway_url: String,
    /// Holds state/, the config file and the log; reuse it to restart on the same state.
    pub dir: &'a Path,
    /// Extra YAML under `telegram:` (e.g. `stream_mode: edit`).
    pub telegram_yaml: &'a str,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
}

pub fn env_for(setup: &Setup<'_>, status: SocketAddr) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("MCAS_TELEGRAM_BOT_TOKEN".into(), TOKEN.into()),
        ("MCAS_TELEGRAM_API_URL".into(), setup.bot.url()),
        ("MCAS_GATEWAY_URL".into(), setup.gateway_url.clone()),
        ("MCAS_GATEWAY_KEY".into(), KEY.into()),
        ("MCAS_TELEGRAM_MODEL".into(), "sim-small".into()),
        ("MCAS_TELEGRAM_ALLOWED_USERS".into(), format!("{ALICE},{BOB}")),
        ("MCAS_TELEGRAM_STATE_DIR".into(), setup.dir.join("state").display().to_string()),
        ("MCAS_TELEGRAM_STATUS_LISTEN".into(), status.to_string()),
        ("RUST_LOG".into(), "debug,hyper=info,reqwest=info,hyper_util=info".into()),
    ];
    env.extend(setup.env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

pub struct Runner {
    child: Child,
    pub status: SocketAddr,
    log: PathBuf,
}

impl Runner {
    pub fn spawn(setup: &Setup<'_>) -> Runner {
        let status: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = setup.dir.join("telegram.yaml");
        let yaml = format!(
            "telegram:\n  poll_timeout: 2s\n{}\nchat:\n  system_prompt: You are a test bot.\n  history_messages: 10\n",
            indent(setup.telegram_yaml)
        );
        std::fs::write(&config, yaml).unwrap();
        let log = setup.dir.join(format!("runner-{}.log", status.port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcas-telegram"));
        cmd.arg("--config").arg(&config).args(setup.args);
        for var in VARS {
            cmd.env_remove(var);
        }
        cmd.envs(env_for(setup, status));
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        Runner { child, status, log }
    }

    /// GET /status → (HTTP status, JSON).
    pub async fn status(&self) -> (u16, Value) {
        let resp = reqwest::get(format!("http://{}/status", self.status)).await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.status)).await.unwrap().text().await.unwrap()
    }

    /// Polls `/status` until `f` accepts it (the listener may not be up yet).
    pub async fn wait_status(&self, what: &str, f: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
        let url = format!("http://{}/status", self.status);
        let mut last = None;
        for _ in 0..300 {
            if let Ok(resp) = reqwest::get(&url).await {
                let code = resp.status().as_u16();
                if let Ok(v) = resp.json::<Value>().await {
                    if f(code, &v) {
                        return (code, v);
                    }
                    last = Some((code, v));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for /status {what}; last: {last:?}");
    }

    pub async fn wait_handled(&self, n: u64) {
        let what = format!("messages_handled >= {n}");
        self.wait_status(&what, |_, v| v["messages_handled"].as_u64() >= Some(n)).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mcas-telegram log ----\n{}", self.log());
        }
    }
}

fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("  {l}\n")).collect()
}
