//! Issue 10, hygiene: the client address cannot be forged (every `X-Forwarded-For` line,
//! IPv6 per /64), the admin listener and reloads (`admin.token`, serialised reloads, pid file
//! and upgrade socket in a runtime directory), one half-open trial per circuit, and MCP session
//! ids bound to their key and age, with `Origin` checked against `:authority` over HTTP/2.

use crate::common::gateway::{check, key_yaml, spawn_gateway, spawn_gateway_admin_only_with_env, Gw};
use crate::common::{free_port, spawn, spawn_sim, wait_ready};
use mcas::mcp::seal::{unix_now, Pinned, Sealer};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "client-key-hygiene-0001";
const BOB_KEY: &str = "client-key-hygiene-0002";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const SESSION_KEY_HEX: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

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
struct Own {
    proc: crate::common::Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn own_yaml(port: u16, admin: &str, rest: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 2, grace_period: 1s, shutdown_timeout: 1s, \
         pid_file: \"/tmp/mcas-test-{port}.pid\", upgrade_sock: \"/tmp/mcas-test-{port}.sock\" }}\n\
         admin: {{ {admin} }}\n{rest}"
    )
}

async fn own_gateway(admin_extra: &str, rest: &str) -> Own {
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

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Without a token `POST /reload` is refused (and the rest of the admin listener stays open on
/// loopback); with one, every admin endpoint needs it.
#[tokio::test]
async fn admin_token_guards_reload_and_the_admin_listener() {
    let open = own_gateway("", &key_yaml("alice", KEY)).await;
    let r = client().post(open.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 403, "an unauthenticated reload was accepted");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "admin_token_required", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("admin.token"), "{v}");
    assert_eq!(client().get(open.admin_url("/metrics")).send().await.unwrap().status(), 200);

    let guarded = own_gateway(", token: \"${MCAS_ADMIN_TOKEN}\"", &key_yaml("alice", KEY)).await;
    for (method, path) in [("GET", "/metrics"), ("GET", "/health"), ("POST", "/reload")] {
        let req = |token: Option<&str>| {
            let r = client().request(method.parse().unwrap(), guarded.admin_url(path));
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        let r = req(None).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(req(Some("admin-token-for-tests-wrong")).send().await.unwrap().status(), 401, "{method} {path}");
        assert_eq!(req(Some(ADMIN_TOKEN)).send().await.unwrap().status(), 200, "{method} {path} with the token");
    }
    assert!(!guarded.proc.logs().contains(ADMIN_TOKEN), "the admin token reached the log");
}

/// An admin listener reachable from other hosts needs a token: `--check` fails naming
/// `admin.token`, and so does start-up.
#[tokio::test]
async fn non_loopback_admin_without_token_is_refused() {
    let port = free_port();
    let yaml = format!("admin: {{ listen: \"0.0.0.0:{port}\" }}\n{}", key_yaml("alice", KEY));
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.token"), "{out}");
    let with_token =
        format!("admin: {{ listen: \"0.0.0.0:{port}\", token: \"{ADMIN_TOKEN}\" }}\n{}", key_yaml("a", KEY));
    assert_eq!(check(&with_token, &[]).0, 0);
    let (code, out) = check("admin: { token: short }\n", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("admin.token"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let gw_port = free_port();
    std::fs::write(&config, own_yaml(gw_port, &format!("listen: \"0.0.0.0:{port}\""), &key_yaml("alice", KEY)))
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
    let mut proc =
        spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &["--config".into(), config.display().to_string()], &[], addr);
    let status = proc.wait_exit(Duration::from_secs(20)).expect("the gateway started with an open admin listener");
    assert_eq!(status.code(), Some(1));
    assert!(proc.logs().contains("admin.token"), "{}", proc.logs());
}

/// The config files of the reload test: provider `p{i}`, and with `slow` 3,000 keys more,
/// so compiling it takes a while (a reload of it is still running when the next file lands).
fn reload_body(i: usize, slow: bool) -> String {
    let mut keys = key_yaml("alice", KEY);
    if slow {
        for k in 0..3000 {
            keys.push_str(&format!("  - {{ name: k{k}, key_sha256: \"{:064x}\", models: [\"*\"] }}\n", k + 1));
        }
    }
    format!("{keys}providers:\n  - {{ name: p{i}, url: \"http://127.0.0.1:9/v1\", models: [\"*\"] }}\n")
}

async fn provider_names(gw: &Own) -> Vec<String> {
    let health: Value =
        client().get(gw.admin_url("/health")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    health["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Many reloads at once (POST /reload on two admin threads and SIGHUP) while the file changes
/// between them, alternating slow and quick contents: every one answers, and the state in the
/// end is always the file's last content — a reload that read an older file is never swapped
/// in after one that read a newer file.
#[tokio::test]
async fn concurrent_reloads_end_on_the_last_file() {
    let gw = own_gateway(", token: \"${MCAS_ADMIN_TOKEN}\"", &reload_body(0, false)).await;
    let head = std::fs::read_to_string(&gw.config).unwrap();
    let head = head.split("keys:").next().unwrap().to_string();
    let write = |i: usize, slow: bool| {
        // Written whole and renamed, so a reload never reads half a file.
        let tmp = gw.config.with_extension("tmp");
        std::fs::write(&tmp, format!("{head}{}", reload_body(i, slow))).unwrap();
        std::fs::rename(&tmp, &gw.config).unwrap();
    };
    let reload = || {
        let url = gw.admin_url("/reload");
        tokio::spawn(
            async move { client().post(url).bearer_auth(ADMIN_TOKEN).send().await.map(|r| r.status().as_u16()) },
        )
    };
    let pid = gw.proc.pid().to_string();
    let hup = || std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();

    // A burst: the file changes 10 times, 3 requests and a signal after each change.
    let mut tasks = Vec::new();
    for i in 1..=10 {
        write(i, i % 2 == 1);
        tasks.extend((0..3).map(|_| reload()));
        hup();
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(provider_names(&gw).await, ["p10"], "{}", gw.proc.logs());

    // A signal starts a slow reload; the file changes to a quick one while it runs, and a
    // request reloads that. The quick one must not be overwritten by the slow one.
    for i in (11..21).step_by(2) {
        write(i, true);
        assert_eq!(reload().await.unwrap().unwrap(), 200);
        hup();
        tokio::time::sleep(Duration::from_millis(30)).await;
        write(i + 1, false);
        let (a, b) = (reload(), reload());
        assert_eq!((a.await.unwrap().unwrap(), b.await.unwrap().unwrap()), (200, 200));
        // Whatever is still running has had time to finish.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(provider_names(&gw).await, [format!("p{}", i + 1)], "a reload of an older file won");
    }
}

/// Stops a daemonised gateway when the test ends, however it ends: the process named by the
/// pid file, else (the pid file went elsewhere) the process started with this test's own
/// config file, found by its exact command line.
struct DaemonGuard {
    pid_file: PathBuf,
    config: PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let mut pids: Vec<String> =
            std::fs::read_to_string(&self.pid_file).into_iter().map(|p| p.trim().to_string()).collect();
        let config = self.config.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|arg| arg == config.as_bytes()) {
                pids.push(entry.file_name().to_string_lossy().to_string());
            }
        }
        for pid in pids {
            let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
        }
    }
}

/// Starts `--daemon` and waits for the pid file at `expect`.
async fn daemon_writes_pid_file(config: &Path, envs: &[(&str, &str)], expect: &Path) {
    let port = free_port();
    let admin_port = free_port();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 1, grace_period: 1s, shutdown_timeout: 1s }}\n\
         admin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n{}",
        key_yaml("alice", KEY)
    );
    std::fs::write(config, yaml).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = vec!["--daemon".to_string(), "--config".to_string(), config.display().to_string()];
    let _launcher = spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &args, envs, addr);
    let _guard = DaemonGuard { pid_file: expect.to_path_buf(), config: config.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !expect.exists() {
        assert!(Instant::now() < deadline, "no pid file at {}", expect.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(&format!("http://127.0.0.1:{admin_port}/health")).await;
    let pid = std::fs::read_to_string(expect).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid:?}");
}

/// With no `server.pid_file`, the pid file goes to `$RUNTIME_DIRECTORY` (systemd), else next
/// to the config file — never /tmp.
#[tokio::test]
async fn pid_file_defaults_to_the_runtime_directory() {
    let run = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let runtime_dir = run.path().display().to_string();
    daemon_writes_pid_file(
        &etc.path().join("gateway.yaml"),
        &[("RUNTIME_DIRECTORY", runtime_dir.as_str())],
        &run.path().join("mcas-gateway.pid"),
    )
    .await;
    let etc2 = tempfile::tempdir().unwrap();
    daemon_writes_pid_file(&etc2.path().join("gateway.yaml"), &[], &etc2.path().join("mcas-gateway.pid")).await;
}

/// A one-backend provider whose circuit opens at the first 500; once the cool-down has passed,
/// many requests at once: exactly one reaches the backend (the half-open trial).
#[tokio::test]
async fn half_open_circuit_lets_one_trial_through() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                // The first answer opens the circuit; the trial is slow, so the others race it.
                let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let body = "{}";
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let rest = format!(
        "{}providers:\n  - {{ name: one, url: \"http://{backend}\", backends: [\"{backend}\"], models: [\"*\"], \
         circuit: {{ failures: 1, cooldown: 1s }}, retries: 0, health: {{ enabled: false }} }}\n",
        key_yaml("alice", KEY)
    );
    // Two worker threads, so requests really race.
    let gw = own_gateway("", &rest).await;
    let url = format!("http://{}/v1/models", gw.addr);
    assert_eq!(client().get(&url).bearer_auth(KEY).send().await.unwrap().status(), 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let racers: Vec<_> = (0..24)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).bearer_auth(KEY).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap().unwrap());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2, "trials let through: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
}

/// Selection itself under a race: threads pick from a provider whose only backend's circuit
/// has just finished its cool-down; exactly one pick gets the backend (the trial), the others
/// get nothing.
#[test]
fn concurrent_picks_take_one_half_open_trial() {
    use mcas::upstream::circuit::CircuitSettings;
    use mcas::upstream::{Backend, Fleet, Provider, Timeouts};
    use std::sync::Barrier;
    for round in 0..40 {
        let backend = Arc::new(Backend::new("127.0.0.1:9".parse().unwrap(), 1));
        let fleet = Fleet {
            circuit: CircuitSettings {
                failures: 1,
                window: Duration::from_secs(10),
                cooldown: Duration::from_millis(30),
            },
            ..Fleet::default()
        };
        let models = mcas::auth::ModelGlobs(vec!["*".into()]);
        let p = Provider::new(
            "p",
            "h".into(),
            String::new(),
            None,
            None,
            models,
            vec![backend.clone()],
            Timeouts::default(),
        )
        .with_fleet(fleet);
        let p = Arc::new(p);
        p.record_failure(&backend);
        assert!(p.pick(b"k", &[]).is_none(), "an open circuit let a request through");
        std::thread::sleep(Duration::from_millis(40));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    (0..50).filter(|_| p.pick(b"k", &[]).is_some()).count()
                })
            })
            .collect();
        let picked: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(picked, 1, "round {round}: {picked} requests sent to a half-open backend");
    }
}

fn mcp_rest(sim: SocketAddr, ttl: &str) -> String {
    format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB_KEY}\", models: [\"*\"] }}\n\
         mcp: {{ session_key: \"{SESSION_KEY_HEX}\"{ttl} }}\nproviders:\n  - {{ name: sim, url: \"http://{sim}\" }}\n\
         routes:\n  - {{ path: \"/tools/*\", provider: sim, strip_prefix: \"/tools\", kind: mcp }}\n"
    )
}

fn pin(sim: SocketAddr, key: &str) -> Pinned {
    Pinned { provider: "sim".into(), backend: sim, token: "backend-sid-1".into(), key: key.into() }
}

/// A sealed session id works only for the key it was sealed for and only within
/// `mcp.session_ttl`; the legacy endpoint URL's sealed value likewise.
#[tokio::test]
async fn mcp_session_ids_are_bound_to_their_key_and_expire() {
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway("", &mcp_rest(sim.addr, ", session_ttl: 1h"), &[]).await;
    let sealer = Sealer::from_text(SESSION_KEY_HEX).unwrap();
    let send = |sealed: String, key: &'static str| {
        client()
            .post(gw.url("/tools/echo"))
            .bearer_auth(key)
            .header("mcp-session-id", sealed)
            .body("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}")
            .send()
    };
    let now = unix_now();
    let fresh = sealer.seal_at(&pin(sim.addr, "alice"), now - 60);
    let r = send(fresh.clone(), KEY).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["mcp-session-id"], "backend-sid-1");

    let r = send(fresh.clone(), BOB_KEY).await.unwrap();
    assert_eq!(r.status(), 404, "another key used alice's session");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "session_not_found");
    let stale = sealer.seal_at(&pin(sim.addr, "alice"), now - 3700);
    assert_eq!(send(stale, KEY).await.unwrap().status(), 404, "a session past mcp.session_ttl");

    // Legacy transport: the sealed value rides in the endpoint URL's query.
    let legacy = |sealed: &str, key: &'static str| {
        client().post(gw.url(&format!("/tools/messages/echo?session_id={sealed}"))).bearer_auth(key).body("{}").send()
    };
    let v: Value = legacy(&fresh, KEY).await.unwrap().json().await.unwrap();
    assert_eq!(v["path"], "/messages/echo?session_id=backend-sid-1", "{v}");
    assert_eq!(legacy(&fresh, BOB_KEY).await.unwrap().status(), 404);

    // The default TTL is 24 hours.
    let day = spawn_gateway("", &mcp_rest(sim.addr, ""), &[]).await;
    let send_day = |sealed: String| {
        client().post(day.url("/tools/echo")).bearer_auth(KEY).header("mcp-session-id", sealed).body("{}").send()
    };
    assert_eq!(send_day(sealer.seal_at(&pin(sim.addr, "alice"), now - 23 * 3600)).await.unwrap().status(), 200);
    assert_eq!(send_day(sealer.seal_at(&pin(sim.addr, "alice"), now - 25 * 3600)).await.unwrap().status(), 404);
}

/// A session minted through the gateway (the sim's echo mints none, so a fake backend does)
/// carries the key's name and the gateway's own issue time.
#[tokio::test]
async fn minted_session_ids_name_the_key() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nmcp-session-id: minted-1\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    let gw = spawn_gateway("", &mcp_rest(backend, ""), &[]).await;
    let r = client().post(gw.url("/tools/mcp")).bearer_auth(BOB_KEY).body("{}").send().await.unwrap();
    let sealed = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let opened = Sealer::from_text(SESSION_KEY_HEX).unwrap().open(&sealed).unwrap();
    assert_eq!((opened.key.as_str(), opened.token.as_str(), opened.backend), ("bob", "minted-1", backend));
}

/// HTTP/2 requests carry `:authority` and no `Host`: a browser's same-origin `Origin` passes,
/// another origin is refused.
#[tokio::test]
async fn http2_origin_is_compared_with_authority() {
    let cert = crate::common::tls::TestCert::localhost();
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway_admin_only_with_env(&cert.listen_yaml(""), &mcp_rest(sim.addr, ""), &[]).await;
    let https = reqwest::Client::builder().add_root_certificate(cert.ca()).build().unwrap();
    let origin = format!("https://localhost:{}", gw.addr.port());
    let send = |origin: String| {
        https
            .post(format!("https://localhost:{}/tools/echo", gw.addr.port()))
            .bearer_auth(KEY)
            .header("origin", origin)
            .body("{}")
            .send()
    };
    let r = send(origin.clone()).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "a same-origin HTTP/2 request was refused: {v}");
    assert!(v["headers"].get("host").is_some());
    assert_eq!(send("https://evil.example".into()).await.unwrap().status(), 403);
    assert_eq!(send(format!("https://localhost:{}", gw.addr.port() + 1)).await.unwrap().status(), 403);
}
