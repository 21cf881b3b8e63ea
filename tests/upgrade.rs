//! The binary upgrade of `systemd/mcas-gateway.service`, run without systemd: the test reads
//! the unit's `ExecStartPre=`, `ExecStart=`, `ExecReload=` and `PIDFile=` lines and runs those
//! exact commands (the unit's paths swapped for the built binary, a temporary config and a
//! temporary runtime directory passed as `RUNTIME_DIRECTORY`, `$MAINPID` read from the pid
//! file, as systemd does), while a load generator counts refused and failed requests and
//! event streams are in flight across the reload. Expected: nothing refused, nothing failed,
//! every stream ends with `[DONE]`, and the new process serves after the old one exits.

use crate::common::{free_port, spawn_sim, wait_ready};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "client-key-upgrade-0123";
const UNIT: &str = "systemd/mcas-gateway.service";

/// The unit's commands of one kind (`ExecReload`, …), in order, with the unit's paths replaced.
fn unit_commands(unit: &str, kind: &str, swap: &dyn Fn(&str) -> String) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{kind}=")))
        .map(|cmd| swap(cmd).split_whitespace().map(str::to_string).collect())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

/// Runs one of the unit's command lines as systemd would (no shell), output to `log`.
fn run(argv: &[String], run_dir: &Path, log: &Path, mainpid: Option<u32>) {
    let args: Vec<String> =
        argv[1..].iter().map(|a| a.replace("$MAINPID", &mainpid.map(|p| p.to_string()).unwrap_or_default())).collect();
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let status = Command::new(&argv[0])
        .args(&args)
        .env("RUNTIME_DIRECTORY", run_dir)
        .env_remove("MCAS_VLLM_URL")
        .env_remove("MCAS_VLLM_KEY")
        .env_remove("MCAS_GATEWAY_PORT")
        .env_remove("MCAS_GATEWAY_HOST")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(status.success(), "{argv:?} failed ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The daemons the unit's commands started (the test's own processes): stopped on drop.
struct Daemons {
    pids: Vec<u32>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for pid in &self.pids {
            if alive(*pid) {
                let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    streams_done: AtomicU64,
    streams_failed: AtomicU64,
}

/// Requests on a new connection each (a refused connect shows as `refused`), until `stop`.
async fn load(url: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap();
    let body = serde_json::json!({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]});
    while !stop.load(Ordering::Relaxed) {
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let answer = match c.post(&url).bearer_auth(KEY).json(&body).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) if e.is_connect() => counts.refused.fetch_add(1, Ordering::Relaxed),
            Ok(status) => {
                eprintln!("failed: {status}");
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => {
                eprintln!("failed: {e}");
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// One event stream of 30 tokens 100 ms apart (3 s): counted done when `[DONE]` arrives.
async fn stream(url: String, counts: Arc<Counts>) {
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(60)).build().unwrap();
    let body =
        serde_json::json!({"model": "sim-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = c
        .post(&url)
        .bearer_auth(KEY)
        .header("x-sim-tokens", "30")
        .header("x-sim-itl-ms", "100")
        .json(&body)
        .send()
        .await;
    let mut text = Vec::new();
    let ok = match resp {
        Ok(r) if r.status() == 200 => {
            let mut s = r.bytes_stream();
            let mut ok = true;
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(b) => text.extend_from_slice(&b),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            ok && String::from_utf8_lossy(&text).contains("data: [DONE]")
        }
        _ => false,
    };
    let c = if ok { &counts.streams_done } else { &counts.streams_failed };
    c.fetch_add(1, Ordering::Relaxed);
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_upgrade_refuses_nothing_and_finishes_streams_in_flight() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT)).unwrap();
    let sim = spawn_sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", threads: 2, grace_period: 4s, shutdown_timeout: 1s }}\n\
             admin: {{ listen: \"127.0.0.1:{admin}\" }}\nlog: {{ access_log: false }}\n\
             keys: [{{ name: alice, key: \"{KEY}\", models: [\"*\"] }}]\n\
             providers: [{{ name: sim, url: \"http://{}/v1\", models: [\"*\"] }}]\n",
            sim.addr
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_mcas-gateway");
    let (cfg, rd) = (config.display().to_string(), run_dir.display().to_string());
    let swap = |s: &str| s.replace("/usr/local/bin/mcas-gateway", bin).replace("/etc/mcas/gateway.yaml", &cfg);
    let pid_file = PathBuf::from(unit_value(&unit, "PIDFile").replace("/run/mcas-gateway", &rd));
    let log = dir.path().join("commands.log");
    let mut daemons = Daemons { pids: Vec::new() };

    for cmd in unit_commands(&unit, "ExecStartPre", &swap).iter().chain(&unit_commands(&unit, "ExecStart", &swap)) {
        run(cmd, &run_dir, &log, None);
    }
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    wait_ready(&format!("http://127.0.0.1:{port}/health")).await;
    let old = read_pid(&pid_file).expect("the daemon wrote the unit's PIDFile");
    daemons.pids.push(old);

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4).map(|_| tokio::spawn(load(url.clone(), counts.clone(), stop.clone()))).collect();
    until("load before the reload", || counts.ok.load(Ordering::Relaxed) >= 50).await;
    let streams: Vec<_> = (0..6).map(|_| tokio::spawn(stream(url.clone(), counts.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // the streams are under way on the old process

    let reload = unit_commands(&unit, "ExecReload", &swap);
    assert!(reload.iter().any(|c| c.contains(&"--upgrade".to_string())), "ExecReload performs the upgrade");
    let (rd2, log2) = (run_dir.clone(), log.clone());
    tokio::task::spawn_blocking(move || {
        for cmd in &reload {
            run(cmd, &rd2, &log2, Some(old));
        }
    })
    .await
    .unwrap();
    // As systemd does for Type=forking, wait for the pid file to name the new process (the
    // daemon writes it after its parent exited).
    until("the pid file to name the new process", || read_pid(&pid_file).is_some_and(|p| p != old)).await;
    let new = read_pid(&pid_file).unwrap();
    daemons.pids.push(new);
    until("the old process to exit", || !alive(old)).await;
    let before = counts.ok.load(Ordering::Relaxed);
    until("requests served by the new process", || counts.ok.load(Ordering::Relaxed) >= before + 50).await;
    assert!(alive(new));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    for s in streams {
        s.await.unwrap();
    }
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "upgrade under load: {} requests sent, {} ok, {} refused, {} failed; {} streams in flight finished, {} cut",
        c(&counts.sent),
        c(&counts.ok),
        c(&counts.refused),
        c(&counts.failed),
        c(&counts.streams_done),
        c(&counts.streams_failed)
    );
    assert_eq!(c(&counts.refused), 0, "connections refused during the upgrade");
    assert_eq!(c(&counts.failed), 0, "requests failed during the upgrade");
    assert_eq!((c(&counts.streams_done), c(&counts.streams_failed)), (6, 0), "streams in flight finish");
    // And the new process stops when told to (a listener whose accept failed at once during
    // shutdown once kept a daemon spinning after SIGINT: vendor/patches/0016).
    let _ = Command::new("kill").args(["-INT", &new.to_string()]).status();
    until("the new process to exit after SIGINT", || !alive(new)).await;
}
