//! `admin.token`, serialised reloads, and the pid file in the runtime directory.

use super::{client, own_gateway, own_yaml, Own, ADMIN_TOKEN, KEY};
use crate::common::gateway::{check, key_yaml};
use crate::common::{free_port, spawn, wait_ready};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
