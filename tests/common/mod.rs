//! Test harness: spawns built binaries on free ports, polls for readiness, cleans up on drop.
//!
//! ```ignore
//! let sim = common::spawn_sim(&["--tokens", "4"]).await;
//! let url = sim.url("/v1/models");
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod dnsmasq;
pub mod gateway;
pub mod raw_http;
pub mod redis;
pub mod text;
pub mod tls;
pub mod ws;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (bind to port 0, take the port, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A child process, killed and reaped on drop. Its stdout and stderr go to one log file;
/// when the test is panicking the log is printed, so a failure shows what the process said.
pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process now, in KiB (`VmRSS` from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- logs of pid {} ({}) ---\n{}", self.child.id(), self.addr, self.logs());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts `bin` with `args` and extra environment `envs`; `addr` is where it will listen
/// (the caller put it in `args`). Does not wait for readiness: see [`wait_ready`].
pub fn spawn(bin: &str, args: &[String], envs: &[(&str, &str)], addr: SocketAddr) -> Proc {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = std::path::Path::new(bin).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let log = std::env::temp_dir().join(format!(
        "mcas-test-{name}-{}-{}.log",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let out = File::create(&log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let child = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    Proc { addr, child, log }
}

/// Starts `mcas-sim` on a free port with `extra_args` and waits until it answers. A sim that
/// exits at once (someone took the port in between) is retried on another port.
pub async fn spawn_sim(extra_args: &[&str]) -> Proc {
    let mut last = String::new();
    for _ in 0..3 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args = vec!["--listen".to_string(), addr.to_string()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut proc = spawn(env!("CARGO_BIN_EXE_mcas-sim"), &args, &[], addr);
        match proc.wait_ready("/health").await {
            Ok(()) => return proc,
            Err(e) => last = e,
        }
    }
    panic!("mcas-sim did not start: {last}")
}

/// Polls `url` every 20 ms until any HTTP answer arrives (whatever its status); panics after
/// 30 s.
pub async fn wait_ready(url: &str) {
    if let Err(e) = poll(url, || None).await {
        panic!("{e}")
    }
}

impl Proc {
    /// Like [`wait_ready`] on `path`, but gives up at once, with the logs, if the process
    /// exits.
    pub async fn wait_ready(&mut self, path: &str) -> Result<(), String> {
        let url = self.url(path);
        self.wait_url(&url).await
    }

    /// Like [`wait_ready`] on any URL (another listener of the same process).
    pub async fn wait_url(&mut self, url: &str) -> Result<(), String> {
        let url = url.to_string();
        let log = self.log.clone();
        let child = &mut self.child;
        poll(&url, || {
            let status = child.try_wait().ok().flatten()?;
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            Some(format!("process exited ({status}) before {url} answered:\n{logs}"))
        })
        .await
        .map_err(|e| match e.starts_with("process exited") {
            true => e,
            false => format!("{e}\nits log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
        })
    }
}

async fn poll(url: &str, mut exited: impl FnMut() -> Option<String>) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(url).send().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(format!("{url} did not answer within 30 s: {e}")),
            Err(_) => {
                if let Some(why) = exited() {
                    return Err(why);
                }
                tokio::time::sleep(Duration::from_millis(20)).await
            }
        }
    }
}

/// The Python that has the official SDKs (`mcp`, `openai`): `MCAS_TEST_PYTHON`, else the
/// repository's `.venv` (which `.ci/run` and the README's test command create).
pub fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("MCAS_TEST_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "these tests need Python with the official SDKs: run `python3 -m venv .venv && \
         .venv/bin/pip install mcp==2.3.0 openai==3.54.0` in the repository (.ci/run does this), \
         or set MCAS_TEST_PYTHON to a python that has both installed"
    );
}
