//! A headless Debian `chromium` driven over the DevTools protocol (a few commands over
//! tokio-tungstenite): open a page, read what the browser logged, evaluate expressions,
//! take screenshots. Chromium is killed on drop.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    /// Every event received so far (`method` and `params`).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// `None` (after saying why) when chromium is missing and `MCAS_TEST_SKIP_CHROMIUM=1`; a
/// missing chromium otherwise fails the test (CI installs it: .ci/run).
pub async fn launch() -> Option<Browser> {
    if Command::new("chromium").arg("--version").output().is_err() {
        if std::env::var("MCAS_TEST_SKIP_CHROMIUM").as_deref() == Ok("1") {
            eprintln!("skipped: chromium is not installed (MCAS_TEST_SKIP_CHROMIUM=1)");
            return None;
        }
        panic!("chromium is not installed (apt-get install chromium; or MCAS_TEST_SKIP_CHROMIUM=1 to skip)");
    }
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Chromium prints where its DevTools endpoint listens on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium printed no DevTools address");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect to DevTools");
    Some(Browser { child, ws, next_id: 0, session: None, events: Vec::new(), _profile: profile })
}

impl Browser {
    /// Sends `method` (to the page once [`open`](Self::open) attached one) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await;
            let text = match next.expect("DevTools answer").expect("DevTools socket open").unwrap() {
                Message::Text(t) => t,
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// A new tab on `url`, with the console and the browser's log reported as events.
    pub async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached =
            self.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(domain, json!({})).await;
        }
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        r["result"]["value"].clone()
    }

    /// Console errors, uncaught exceptions and browser log errors (failed loads, CSP) so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => matches!(e["params"]["type"].as_str(), Some("error" | "assert")),
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .map(|e| e.to_string())
            .collect()
    }

    /// Sets the viewport (CSS pixels; `mobile` as a phone would).
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        let scale = if mobile { 2 } else { 1 };
        let p = json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile});
        self.call("Emulation.setDeviceMetricsOverride", p).await;
    }

    /// A PNG of the page as rendered now, written to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
