//! Issue 15: limits shared by several gateway instances through a real `redis-server`
//! (and a 3-node Redis Cluster): rpm and tpm per window across three instances, concurrency
//! exact across instances, slots of a SIGKILLed instance freed by lease expiry, and a Redis
//! outage handled per `limits.on_store_error` with recovery without a restart.

use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::redis::{self, Cluster, Redis};
use crate::common::{spawn_sim, Proc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "sk-shared-0123456789abcdef";
/// Tests of counting must not fall back to local counting when the loaded test machine
/// answers slower than the default 50ms: the outage test covers that.
const COUNTING: &str = "window: 60s, store_timeout: 2s";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(8).build().unwrap()
}

fn chat(stream: bool) -> Value {
    json!({"model": "sim-model", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

fn config(store: &str, limits: &str, key_limits: &str, sim: &Proc) -> String {
    format!(
        "limits: {{ store: \"{store}\", {limits} }}\nkeys:\n  - {{ name: shared, key: \"{KEY}\", models: [\"*\"], limits: {{ {key_limits} }} }}\n\
         providers:\n  - {{ name: vllm, url: \"http://{}/v1\", models: [\"*\"] }}\n",
        sim.addr
    )
}

async fn gateways(n: usize, rest: &str, envs: &[(&str, &str)]) -> Vec<Gw> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_gateway("", rest, envs).await);
    }
    out
}

/// Sends `total` requests spread over the gateways (`per_gw` at a time on each); returns
/// (admitted, tokens of admitted responses, refusal codes seen).
async fn load(gws: &[Gw], total: usize, per_gw: usize) -> (u64, u64, Vec<String>) {
    let c = client();
    let urls: Vec<String> = gws.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let results = futures_util::stream::iter(0..total)
        .map(|i| {
            let (c, url) = (c.clone(), urls[i % urls.len()].clone());
            async move {
                let r = c.post(url).bearer_auth(KEY).json(&chat(false)).send().await.unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v)
            }
        })
        .buffer_unordered(per_gw * gws.len())
        .collect::<Vec<_>>()
        .await;
    let (mut ok, mut tokens, mut codes) = (0, 0, Vec::new());
    for (status, v) in results {
        if status == 200 {
            ok += 1;
            tokens += v["usage"]["total_tokens"].as_u64().unwrap();
        } else {
            assert_eq!(status, 429, "{v}");
            codes.push(v["error"]["code"].as_str().unwrap().to_string());
        }
    }
    (ok, tokens, codes)
}

#[tokio::test]
async fn rpm_is_shared_by_three_instances() {
    if !redis::available() {
        return;
    }
    let redis = Redis::start(&[]);
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let gws = gateways(3, &config(&redis.url(), COUNTING, "rpm: 600", &sim), &[]).await;
    let (ok, _, codes) = load(&gws, 900, 3).await;
    eprintln!("rpm 600, 3 instances, 900 requests: {ok} admitted");
    // Alone, each instance would admit 600 (900 in all).
    assert!((588..=612).contains(&ok), "admitted {ok}, want 600 ± 2 %");
    assert!(codes.iter().all(|c| c == "rate_limit_requests"), "{codes:?}");
}

#[tokio::test]
async fn tpm_is_shared_by_three_instances() {
    if !redis::available() {
        return;
    }
    let redis = Redis::start(&[]);
    let sim = spawn_sim(&["--tokens", "20"]).await;
    let gws = gateways(3, &config(&redis.url(), COUNTING, "tpm: 12000", &sim), &[]).await;
    let mut tokens = 0;
    let mut codes = Vec::new();
    // Rounds of one request per instance, until the budget refuses everywhere.
    for _ in 0..100 {
        let (_, t, c) = load(&gws, 30, 1).await;
        tokens += t;
        let done = c.len() == 30;
        codes.extend(c);
        if done {
            break;
        }
    }
    eprintln!("tpm 12000, 3 instances: {tokens} tokens admitted");
    assert!((11_760..=12_240).contains(&tokens), "admitted {tokens} tokens, want 12000 ± 2 %");
    assert!(codes.iter().all(|c| c == "rate_limit_tokens"), "{codes:?}");
}

#[tokio::test]
async fn per_ip_rpm_is_shared_by_instances() {
    if !redis::available() {
        return;
    }
    let redis = Redis::start(&[]);
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let gws = gateways(2, &config(&redis.url(), "per_ip: { rpm: 30 }, store_timeout: 2s", "", &sim), &[]).await;
    let (ok, _, codes) = load(&gws, 60, 2).await;
    eprintln!("per_ip rpm 30, 2 instances, 60 requests: {ok} admitted");
    // Alone, each instance would admit 30 (60 in all).
    assert!((29..=30).contains(&ok), "admitted {ok}");
    assert!(codes.iter().all(|c| c == "rate_limit_ip_requests"), "{codes:?}");
    let counted = redis.cli(&["hget", "mcas:{ip:127.0.0.1}:w", "r"]);
    assert_eq!(counted.trim(), "30", "the address's window is in Redis");
}

/// Opens a stream on `gw`: Ok(the open body) or Err(the refusal's status and code).
async fn open_stream(gw: &Gw) -> Result<reqwest::Response, (u16, String)> {
    let r = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(true)).send().await.unwrap();
    if r.status() == 200 {
        return Ok(r);
    }
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    Err((status, v["error"]["code"].as_str().unwrap_or("").to_string()))
}

#[tokio::test]
async fn concurrency_is_exact_across_instances_and_a_killed_instance_frees_its_slots() {
    if !redis::available() {
        return;
    }
    let redis = Redis::start(&[]);
    // Streams of 60 s: they outlive the 5 s lease many times over (renewed while alive).
    let sim = spawn_sim(&["--tokens", "300", "--itl-ms", "200"]).await;
    let mut gws = gateways(3, &config(&redis.url(), COUNTING, "concurrency: 4", &sim), &[]).await;
    let mut open = Vec::new();
    for i in 0..4 {
        open.push((i % 3, open_stream(&gws[i % 3]).await.expect("a free slot")));
    }
    for gw in &gws {
        assert_eq!(open_stream(gw).await.unwrap_err(), (429, "rate_limit_concurrency".into()));
    }
    // gws[0] holds two slots; it dies without releasing them.
    drop(gws.remove(0));
    open.retain(|(g, _)| *g != 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while again.len() < 2 {
        match open_stream(&gws[again.len() % 2]).await {
            Ok(r) => again.push(r),
            Err(e) => {
                assert_eq!(e, (429, "rate_limit_concurrency".into()));
                assert!(Instant::now() < deadline, "the killed instance's slots were never freed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The live streams (renewed past their first lease) still hold theirs: four in all.
    assert_eq!(open_stream(&gws[0]).await.unwrap_err(), (429, "rate_limit_concurrency".into()));
    assert_eq!(open_stream(&gws[1]).await.unwrap_err(), (429, "rate_limit_concurrency".into()));
    let mut first = open.pop().unwrap().1.bytes_stream();
    assert!(first.next().await.unwrap().is_ok(), "a stream admitted before the kill still flows");
}

async fn status_and_code(gw: &Gw) -> (u16, String) {
    let r = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(false)).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn a_redis_outage_follows_on_store_error_and_shared_counting_comes_back() {
    if !redis::available() {
        return;
    }
    const PASS: &str = "redis-pass-4f9a1c77e2";
    let mut redis = Redis::start(&["--requirepass", PASS]);
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let store = format!("redis://:${{REDIS_PASS}}@127.0.0.1:{}", redis.port);
    // Concurrency needs the store on every request: the outage is met at once.
    let limits = |mode: &str| format!("window: 60s, on_store_error: {mode}, store_timeout: 1s");
    let env = [("REDIS_PASS", PASS)];
    let local = spawn_gateway("", &config(&store, &limits("local"), "rpm: 1000, concurrency: 2", &sim), &env).await;
    let closed = spawn_gateway("", &config(&store, &limits("closed"), "rpm: 1000, concurrency: 2", &sim), &env).await;
    for gw in [&local, &closed] {
        assert_eq!(status_and_code(gw).await.0, 200);
    }
    redis.stop();
    for _ in 0..5 {
        assert_eq!(status_and_code(&local).await.0, 200, "on_store_error: local keeps serving");
        assert_eq!(status_and_code(&closed).await, (503, "service_unavailable".into()));
    }
    // The sample line, not the HELP text ("# HELP mcas_limit_store_up 1 while ...").
    let page = local.metrics_with("\nmcas_limit_store_up 0").await;
    assert!(page.contains("\nmcas_limit_store_up 0"), "{page}");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in [&local, &closed] {
        while !gw.metrics_with("\nmcas_limit_store_up 1").await.contains("\nmcas_limit_store_up 1") {
            assert!(Instant::now() < deadline, "the store never came back:\n{}", gw.proc.logs());
        }
    }
    // The first call after the restart may still meet the old connection: poll.
    while status_and_code(&closed).await.0 != 200 {
        assert!(Instant::now() < deadline, "closed does not serve again:\n{}", closed.proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_and_code(&local).await.0, 200);
    let keys = redis.cli(&["-a", PASS, "--no-auth-warning", "--scan", "--pattern", "mcas:*"]);
    assert!(keys.contains("mcas:{k:shared}:w"), "counting is shared again: {keys}");
    for gw in [&local, &closed] {
        let logs = gw.proc.logs();
        assert_eq!(logs.matches("limits store unreachable").count(), 1, "one line per outage:\n{logs}");
        assert!(logs.contains("limits store answers again"), "{logs}");
        assert!(!logs.contains(PASS) && !logs.contains("panicked"), "{logs}");
    }
}

#[tokio::test]
async fn a_redis_cluster_shares_rpm_with_keys_in_one_slot() {
    if !redis::available() {
        return;
    }
    let cluster = Cluster::start();
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let rest =
        config(&cluster.url(), "window: 60s, store_timeout: 2s, store_cluster: true", "rpm: 100, concurrency: 3", &sim);
    let gws = gateways(2, &rest, &[]).await;
    let (ok, _, codes) = load(&gws, 150, 1).await;
    eprintln!("cluster, rpm 100, 2 instances, 150 requests: {ok} admitted");
    assert!((98..=100).contains(&ok), "admitted {ok}");
    assert!(codes.iter().all(|c| c == "rate_limit_requests"), "{codes:?}");
    let keys: String = cluster.nodes.iter().map(|n| n.cli(&["--scan", "--pattern", "mcas:*"])).collect();
    // (The slots key is deleted by Redis whenever its last lease is released.)
    assert!(keys.contains("mcas:{k:shared}:w"), "{keys}");
}

#[test]
fn store_settings_are_checked_at_load() {
    use crate::common::gateway::check;
    let k = "keys:\n  - { name: a, key: k, models: [\"*\"] }\n";
    let (code, out) = check(&format!("limits: {{ store: \"http://x:1\", store_cluster: maybe }}\n{k}"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("limits.store_cluster"), "{out}");
    let (code, out) =
        check(&format!("limits: {{ store: \"mysql://h\", on_store_error: open, store_timeout: 0s }}\n{k}"), &[]);
    assert_eq!(code, 1);
    for path in ["limits.store:", "limits.on_store_error", "limits.store_timeout"] {
        assert!(out.contains(path), "{path} missing from {out}");
    }
    let (code, out) = check(&format!("limits: {{ store_cluster: true }}\n{k}"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("limits.store_cluster: needs limits.store"), "{out}");
    let ok = format!(
        "limits: {{ store: \"rediss://:${{P}}@cache:6380/0\", store_cluster: true, on_store_error: closed, store_timeout: 20ms }}\n{k}"
    );
    let (code, out) = check(&ok, &[("P", "secret-pass-123456")]);
    assert_eq!((code, out.trim()), (0, "config ok"));
}

fn env_file(name: &str) -> Vec<(String, String)> {
    let path = format!("{}/conf/scale-out/{name}.env", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The scale-out example as README runs it: conf/scale-out/gateway.yaml unchanged for three
/// instances, each with its env file's variables (ports moved to free ones), HAProxy with
/// conf/scale-out/haproxy.cfg (the same ports moved), one Redis counting for all.
#[tokio::test]
async fn the_scale_out_example_runs_behind_haproxy() {
    if !redis::available() {
        return;
    }
    let haproxy_found = std::process::Command::new("haproxy").arg("-v").output().is_ok();
    if !haproxy_found && std::env::var("MCAS_TEST_SKIP_HAPROXY").as_deref() == Ok("1") {
        eprintln!("skipped: haproxy is not installed and MCAS_TEST_SKIP_HAPROXY=1");
        return;
    }
    assert!(haproxy_found, "haproxy is missing (apt-get install haproxy; .ci/run installs it)");
    let redis = Redis::start(&[]);
    let sim = spawn_sim(&["--tokens", "2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/scale-out/gateway.yaml");
    let mut cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/scale-out/haproxy.cfg")).unwrap();
    let mut gws = Vec::new();
    for name in ["a", "b", "c"] {
        let vars = env_file(name);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let (port, admin) = (crate::common::free_port(), crate::common::free_port());
        // The instance's ports as the example has them must be where haproxy.cfg sends traffic.
        let (old_port, old_admin) =
            (get("MCAS_GATEWAY_PORT"), get("MCAS_ADMIN_LISTEN").rsplit(':').next().unwrap().to_string());
        let line = format!("127.0.0.1:{old_port} check port {old_admin} ");
        assert!(cfg.contains(&line), "haproxy.cfg has no server line for {name}: {line}");
        cfg = cfg.replace(&line, &format!("127.0.0.1:{port} check port {admin} "));
        let rundir = dir.path().join(name);
        std::fs::create_dir(&rundir).unwrap();
        let envs = [
            ("MCAS_GATEWAY_PORT", port.to_string()),
            ("MCAS_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("MCAS_REDIS_URL", redis.url()),
            ("ALICE_KEY", KEY.to_string()),
            ("MCAS_VLLM_KEY", "upstream-key".to_string()),
            ("MCAS_VLLM_URL", format!("http://{}/v1", sim.addr)),
            ("RUNTIME_DIRECTORY", rundir.display().to_string()),
        ];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let args = vec!["--config".to_string(), conf.to_string()];
        let proc = crate::common::spawn(env!("CARGO_BIN_EXE_mcas-gateway"), &args, &envs, addr);
        crate::common::wait_ready(&format!("http://127.0.0.1:{port}/health")).await;
        gws.push(proc);
    }
    let front = crate::common::free_port();
    assert!(cfg.contains("bind :8080"));
    let cfg = cfg.replace("bind :8080", &format!("bind 127.0.0.1:{front}"));
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&cfg_path).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    let args = vec!["-db".to_string(), "-f".to_string(), cfg_path.display().to_string()];
    let _haproxy = crate::common::spawn("haproxy", &args, &[], addr);
    crate::common::wait_ready(&format!("http://{addr}/health")).await;
    // A new connection per request: HAProxy balances connections.
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap();
    for _ in 0..60 {
        let r = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "600");
    }
    for (gw, name) in gws.iter().zip(["a", "b", "c"]) {
        assert!(gw.logs().contains("\"status\":200,"), "instance {name} served nothing:\n{}", gw.logs());
    }
    // Every request was counted once in the one shared window, plus what each instance holds
    // reserved and unspent: at most a batch of 2 and a refill begun at half a batch, 3.
    let counted: u64 = redis.cli(&["hget", "mcas:{k:alice}:w", "r"]).trim().parse().unwrap();
    assert!((60..=69).contains(&counted), "counted {counted}");
}
