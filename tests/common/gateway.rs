//! Spawning `mcas-gateway` for tests: the harness picks both ports, writes the config to a
//! temporary file, and waits until the admin listener answers.

use super::{free_port, spawn, Proc};
use std::net::SocketAddr;
use std::path::PathBuf;

pub struct Gw {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

/// An `admin.token` for tests that reload through `POST /reload` (which needs one).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// `server_extra` goes inside `server: { … }` (e.g. `max_body: 1KiB`); `rest` holds the other
/// sections (keys, providers, …).
pub async fn spawn_gateway(server_extra: &str, rest: &str, envs: &[(&str, &str)]) -> Gw {
    launch(server_extra, "", rest, envs, true).await
}

/// [`spawn_gateway`] with an `admin.token` ([`ADMIN_TOKEN`]): `POST /reload` works, and every
/// admin endpoint needs the token.
pub async fn spawn_gateway_with_admin_token(server_extra: &str, rest: &str, envs: &[(&str, &str)]) -> Gw {
    launch(server_extra, &format!(", token: \"{ADMIN_TOKEN}\""), rest, envs, true).await
}

/// The `admin:` section of a gateway started by [`spawn_gateway_with_admin_token`], for tests
/// that rewrite its whole config file.
pub fn admin_section(gw: &Gw) -> String {
    format!("admin: {{ listen: \"{}\", token: \"{ADMIN_TOKEN}\" }}\n", gw.admin)
}

/// Like [`spawn_gateway`] but readiness is polled only on the admin listener (for a TLS listener).
pub async fn spawn_gateway_admin_only(server_extra: &str, rest: &str) -> Gw {
    launch(server_extra, "", rest, &[], false).await
}

/// [`spawn_gateway_admin_only`] with environment variables.
pub async fn spawn_gateway_admin_only_with_env(server_extra: &str, rest: &str, envs: &[(&str, &str)]) -> Gw {
    launch(server_extra, "", rest, envs, false).await
}

async fn launch(server_extra: &str, admin_extra: &str, rest: &str, envs: &[(&str, &str)], poll_main: bool) -> Gw {
    // A port picked free can be taken before the gateway binds it (another test's connection):
    // the gateway then exits at once, and is started again on other ports, as the sims are.
    let mut last = String::new();
    for _ in 0..3 {
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", threads: 1, grace_period: 1s, shutdown_timeout: 1s, \
             pid_file: \"/tmp/mcas-test-{port}.pid\", upgrade_sock: \"/tmp/mcas-test-{port}.sock\" {comma} {server_extra} }}\n\
             admin: {{ listen: \"127.0.0.1:{admin_port}\" {admin_extra} }}\n{rest}",
            comma = if server_extra.is_empty() { "" } else { "," }
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let args = vec!["--config".to_string(), config.display().to_string()];
        let mut proc = spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &args, envs, addr);
        let mut ready = proc.wait_url(&format!("http://{admin}/health")).await;
        if ready.is_ok() && poll_main {
            ready = proc.wait_url(&format!("http://{addr}/health")).await;
        }
        match ready {
            Ok(()) => return Gw { proc, addr, admin, config, _dir: dir },
            Err(e) if e.starts_with("process exited") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("mcas-gateway did not start: {last}")
}

/// Runs `mcas-gateway --check` on `yaml`; returns (exit code, stdout + stderr).
pub fn check(yaml: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).expect("write config");
    check_file(path.to_str().unwrap(), envs)
}

pub fn check_file(path: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcas-gateway"));
    cmd.args(["--config", path, "--check"]);
    for var in ["MCAS_VLLM_URL", "MCAS_VLLM_KEY", "MCAS_VLLM_URL_KEY", "MCAS_GATEWAY_HOST", "MCAS_GATEWAY_PORT"] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    let out = cmd.output().expect("run --check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub fn key_yaml(name: &str, key: &str) -> String {
    format!("keys:\n  - {{ name: {name}, key: \"{key}\", models: [\"*\"] }}\n")
}

pub fn provider_yaml(name: &str, url: &str, api_key: &str) -> String {
    format!("providers:\n  - {{ name: {name}, url: \"{url}\", api_key: \"{api_key}\", models: [\"*\"] }}\n")
}

impl Gw {
    /// Polls the admin `/metrics` until it contains `want` (5 s at most); returns the last page.
    pub async fn metrics_with(&self, want: &str) -> String {
        let mut page = String::new();
        for _ in 0..50 {
            page = reqwest::get(self.admin_url("/metrics")).await.unwrap().text().await.unwrap();
            if page.contains(want) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        page
    }
}

/// A raw WebSocket upgrade request (GET with the handshake headers) for `url`, with `key`.
pub fn raw_upgrade(url: &str, key: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
}
