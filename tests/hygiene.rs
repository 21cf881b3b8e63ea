//! Issue 10, hygiene: the client address cannot be forged (every `X-Forwarded-For` line,
//! IPv6 per /64), the admin listener and reloads (`admin.token`, serialised reloads, pid file
//! and upgrade socket in a runtime directory), one half-open trial per circuit, and MCP session
//! ids bound to their key and age, with `Origin` checked against `:authority` over HTTP/2.

mod admin;
mod circuit;
mod mcp;

use crate::common::gateway::{check, key_yaml, spawn_gateway, Gw};
use crate::common::{free_port, spawn, wait_ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "client-key-hygiene-0001";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// Sends `head` (request line and headers, no final blank line) on a fresh connection; returns
/// the status and the body. Raw, so header lines go out exactly as written.
async fn raw(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A request through the pre-authentication guard (no key: 401 unless the guard refuses).
async fn guarded(gw: &Gw, forwarded: &[String]) -> u16 {
    let mut head = format!("GET /v1/models HTTP/1.1\r\nhost: {}", gw.addr);
    for line in forwarded {
        head.push_str(&format!("\r\nx-forwarded-for: {line}"));
    }
    raw(gw.addr, &head).await.0
}

/// A proxy in front (trusted) that adds its own `X-Forwarded-For` line: the client's forged
/// first line does not pick the bucket; and IPv6 clients share a /64's budget.
#[tokio::test]
async fn forwarded_for_is_read_over_every_line_and_ipv6_per_64() {
    let rest = format!("{}limits: {{ per_ip: {{ rpm: 1 }} }}\n", key_yaml("alice", KEY));
    let gw = spawn_gateway("trusted_proxies: [\"127.0.0.1\"]", &rest, &[]).await;

    // The real client 7.7.7.7 forges a fresh first line on every request.
    assert_eq!(guarded(&gw, &["6.6.6.1".into(), "7.7.7.7".into()]).await, 401);
    assert_eq!(guarded(&gw, &["6.6.6.2".into(), "7.7.7.7".into()]).await, 429, "a forged first line escaped the limit");
    assert_eq!(guarded(&gw, &["6.6.6.3, 7.7.7.7".into()]).await, 429, "one line or two: the same client");
    assert_eq!(guarded(&gw, &["7.7.7.7".into(), "8.8.8.8".into()]).await, 401, "another client");

    // One /64, two addresses: one budget. Another /64: its own.
    assert_eq!(guarded(&gw, &["2001:db8:1:2::1".into()]).await, 401);
    assert_eq!(guarded(&gw, &["2001:db8:1:2:ffff:ffff:ffff:ffff".into()]).await, 429, "rotating inside a /64");
    assert_eq!(guarded(&gw, &["2001:db8:1:3::1".into()]).await, 401);
}

/// `limits.ipv6_prefix: 128` counts single addresses again; a bad prefix names the field.
#[tokio::test]
async fn ipv6_prefix_is_configurable() {
    let rest = format!("{}limits: {{ per_ip: {{ rpm: 1 }}, ipv6_prefix: 128 }}\n", key_yaml("alice", KEY));
    let gw = spawn_gateway("trusted_proxies: [\"127.0.0.1\"]", &rest, &[]).await;
    assert_eq!(guarded(&gw, &["2001:db8::1".into()]).await, 401);
    assert_eq!(guarded(&gw, &["2001:db8::2".into()]).await, 401);
    assert_eq!(guarded(&gw, &["2001:db8::2".into()]).await, 429);
    let (code, out) = check("limits: { ipv6_prefix: 0 }\n", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("limits.ipv6_prefix"), "{out}");
}

/// A gateway whose whole config this test writes (the harness's own has no `admin.token`).
pub struct Own {
    proc: crate::common::Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn own_yaml(port: u16, admin: &str, rest: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 2, grace_period: 1s, shutdown_timeout: 1s, \
         pid_file: \"/tmp/mcas-test-{port}.pid\", upgrade_sock: \"/tmp/mcas-test-{port}.sock\" }}\n\
         admin: {{ {admin} }}\n{rest}"
    )
}

pub async fn own_gateway(admin_extra: &str, rest: &str) -> Own {
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let admin = format!("listen: \"127.0.0.1:{admin_port}\"{admin_extra}");
    std::fs::write(&config, own_yaml(port, &admin, rest)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = vec!["--config".to_string(), config.display().to_string()];
    let proc = spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &args, &[("MCAS_ADMIN_TOKEN", ADMIN_TOKEN)], addr);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_ready(&format!("http://{admin}/health")).await;
    Own { proc, addr, admin, config, _dir: dir }
}

impl Own {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}
