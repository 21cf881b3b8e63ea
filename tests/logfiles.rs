//! `log.dir`: the process and access logs in daily files `mcas-gateway-YYYY-MM-DD.log`, access
//! lines as JSON with the fields an operator needs and no secret or prompt; a full disk or an
//! unwritable directory is counted and reported once while requests are still served.
//! (Crossing midnight and `log.keep_days` are unit tests in src/observe/daily_file.rs, on an
//! injected clock.)

use crate::common::gateway::{key_yaml, provider_yaml, spawn_gateway, Gw};
use crate::common::{spawn_sim, Proc};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, SystemTime};

const KEY: &str = "client-key-logfiles-0123456789";
const PROVIDER_KEY: &str = "provider-key-logfiles-abcdef";
const PROMPT: &str = "a prompt that must never reach a log line";

/// The file names of today and tomorrow (UTC): a test running across midnight sees either.
fn todays_names() -> [String; 2] {
    let name = |t: SystemTime| format!("mcas-gateway-{}.log", &humantime::format_rfc3339_seconds(t).to_string()[..10]);
    let now = SystemTime::now();
    [name(now), name(now + Duration::from_secs(86_400))]
}

async fn gw_logging_to(sim: &Proc, dir: &Path) -> Gw {
    let url = format!("http://{}/v1", sim.addr);
    let rest = format!(
        "{}{}log: {{ dir: \"{}\", keep_days: 3 }}\n",
        key_yaml("alice", KEY),
        provider_yaml("vllm", &url, PROVIDER_KEY),
        dir.display()
    );
    spawn_gateway("", &rest, &[]).await
}

fn chat(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": PROMPT}], "model": "sim-model", "stream": stream,
           "stream_options": {"include_usage": true}})
}

async fn post(gw: &Gw, key: &str, stream: bool) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&if stream { chat(true) } else { json!({"messages": [], "model": "sim-model"}) })
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = resp.bytes().await.unwrap();
    (status, id)
}

/// The access line of `request_id` in the day's file, once the writer has written it (5 s).
async fn access_line(dir: &Path, request_id: &str) -> (Value, String) {
    for _ in 0..100 {
        let text: String =
            todays_names().iter().map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default()).collect();
        if let Some(line) = text.lines().find(|l| l.starts_with('{') && l.contains(request_id)) {
            return (serde_json::from_str(line).unwrap(), text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access line for {request_id} in {}", dir.display());
}

#[tokio::test]
async fn access_and_process_logs_go_to_the_days_file_as_json_without_secrets() {
    let sim = spawn_sim(&["--tokens", "5"]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gw_logging_to(&sim, dir.path()).await;
    let (status, id) = post(&gw, KEY, true).await;
    assert_eq!(status, 200);
    let (line, _) = access_line(dir.path(), &id).await;
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["key"], "alice");
    assert_eq!(line["route"], "/v1/*");
    assert_eq!(line["provider"], "vllm");
    assert_eq!(line["backend"], sim.addr.to_string());
    assert_eq!(line["model"], "sim-model");
    assert_eq!(line["status"], 200);
    assert!(line["bytes_in"].as_u64().unwrap() > PROMPT.len() as u64, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    let ttft = line["ttft_ms"].as_f64().unwrap();
    assert!(ttft > 0.0 && ttft <= line["duration_ms"].as_f64().unwrap(), "{line}");
    assert!(line["prompt_tokens"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(line["completion_tokens"], 5);
    assert!(line.get("refusal").is_none(), "{line}");

    // A refusal says why; the key it was refused with appears nowhere.
    let wrong = "wrong-key-never-logged-0123456789";
    let (status, id) = post(&gw, wrong, false).await;
    assert_eq!(status, 401);
    let (line, text) = access_line(dir.path(), &id).await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["refusal"], "invalid_api_key");
    // The process log is in the same file; stdout has no access line.
    assert!(text.contains("mcas-gateway listening on"), "{text}");
    for secret in [KEY, wrong, PROVIDER_KEY, PROMPT] {
        assert!(!text.contains(secret), "{secret:?} in the log file");
    }
    assert!(!gw.proc.logs().contains(&id), "access line also on stdout");
}

/// Requests are served, failures counted and reported once on stderr.
async fn served_while_the_log_cannot_be_written(gw: &Gw) {
    for _ in 0..5 {
        assert_eq!(post(gw, KEY, true).await.0, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let page = gw.metrics_with("mcas_log_write_errors_total ").await;
    let errors: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("mcas_log_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(errors >= 2.0, "{errors} write errors counted");
    let said = gw.proc.logs().matches("cannot write log file").count();
    assert_eq!(said, 1, "{}", gw.proc.logs());
}

#[tokio::test]
async fn a_full_disk_is_counted_and_reported_once_while_requests_are_served() {
    let sim = spawn_sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // /dev/full fails every write with ENOSPC, like a full file system (and works as root).
    for name in todays_names() {
        std::os::unix::fs::symlink("/dev/full", dir.path().join(name)).unwrap();
    }
    let gw = gw_logging_to(&sim, dir.path()).await;
    served_while_the_log_cannot_be_written(&gw).await;
}

#[tokio::test]
async fn an_unwritable_directory_is_counted_and_reported_once_while_requests_are_served() {
    let sim = spawn_sim(&[]).await;
    // Nothing, not even root, can create a directory in /proc.
    let gw = gw_logging_to(&sim, Path::new("/proc/mcas-gateway-logs")).await;
    served_while_the_log_cannot_be_written(&gw).await;
}

#[test]
fn keep_days_without_dir_and_a_file_as_dir_are_refused_by_check() {
    let (code, out) = crate::common::gateway::check(
        &format!("{}log: {{ keep_days: 2 }}\n", key_yaml("alice", KEY)),
        &[("MCAS_VLLM_KEY", "v")],
    );
    assert_eq!(code, 1);
    assert!(out.contains("log.keep_days"), "{out}");
    let (code, out) = crate::common::gateway::check(
        &format!("{}log: {{ dir: \"/etc/hostname\" }}\n", key_yaml("alice", KEY)),
        &[("MCAS_VLLM_KEY", "v")],
    );
    assert_eq!(code, 1);
    assert!(out.contains("log.dir"), "{out}");
}
