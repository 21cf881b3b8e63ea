//! Fleets of `mcas-sim` replicas behind one provider: consistent hashing, bounded load,
//! round robin and least in-flight, active health, circuit breaker, retries, fallbacks and
//! reload. Which replica served is read from the `x-mcas-replica` header.

use crate::common::gateway::{check, spawn_gateway, spawn_gateway_with_admin_token, Gw, ADMIN_TOKEN};
use crate::common::{free_port, spawn_sim, Proc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEY: &str = "client-key-0123456789";
const PROVIDER_KEY: &str = "provider-key-abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn sims(n: usize, args: &[&str]) -> Vec<Proc> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("r{i}");
        let mut a = vec!["--replica-id", id.as_str()];
        a.extend_from_slice(args);
        out.push(spawn_sim(&a).await);
    }
    out
}

fn backends(sims: &[&Proc]) -> String {
    let list: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// One provider `vllm` over `backends` (a YAML list), with `extra` lines (4-space indented).
fn fleet_yaml(backends: &str, extra: &str) -> String {
    format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - name: vllm\n    url: \"http://vllm.internal/v1\"\n    api_key: \"{PROVIDER_KEY}\"\n\
         \x20   backends: {backends}\n{extra}"
    )
}

async fn fleet_gw(sims: &[&Proc], extra: &str) -> Gw {
    spawn_gateway("", &fleet_yaml(&backends(sims), extra), &[]).await
}

fn body(stream: bool) -> Value {
    json!({"model": "sim-model", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

/// Sends one non-streamed chat request; returns (status, replica).
async fn ask(c: &reqwest::Client, gw: &Gw, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body(false));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let replica = resp.headers().get("x-mcas-replica").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    (status, replica)
}

async fn health(gw: &Gw) -> Value {
    // The token is ignored by gateways without one.
    client().get(gw.admin_url("/health")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap()
}

/// The `/health` entry of backend `addr` of provider `provider`.
async fn backend_state(gw: &Gw, provider: &str, addr: &str) -> Value {
    let h = health(gw).await;
    let p = h["providers"].as_array().unwrap().iter().find(|p| p["name"] == provider).unwrap().clone();
    p["backends"].as_array().unwrap().iter().find(|b| b["address"] == addr).cloned().unwrap_or(Value::Null)
}

async fn metric(gw: &Gw, prefix: &str) -> f64 {
    let text =
        client().get(gw.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

#[tokio::test]
async fn same_key_same_replica_and_keys_spread() {
    let s = sims(3, &[]).await;
    let gw =
        fleet_gw(&s.iter().collect::<Vec<_>>(), "    balance: ketama\n    hash_key: [\"header:x-session-id\"]\n").await;
    let c = client();
    let mut first = None;
    for _ in 0..20 {
        let (status, replica) = ask(&c, &gw, &[("x-session-id", "alpha")]).await;
        assert_eq!(status, 200);
        assert_eq!(*first.get_or_insert(replica.clone()), replica, "the same key moved");
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for k in 0..90 {
        let (status, replica) = ask(&c, &gw, &[("x-session-id", &format!("session-{k}"))]).await;
        assert_eq!(status, 200);
        *count.entry(replica).or_default() += 1;
    }
    assert_eq!(count.len(), 3, "{count:?}");
    assert!(count.values().all(|&n| n >= 10), "uneven spread: {count:?}");
    // A later request with an earlier key still lands where it did.
    let (_, again) = ask(&c, &gw, &[("x-session-id", "alpha")]).await;
    assert_eq!(Some(again), first);
    assert!(metric(&gw, "mcas_backend_selections_total").await >= 111.0);
}

#[tokio::test]
async fn bounded_load_holds_under_a_hot_key() {
    let s = sims(4, &[]).await;
    let gw = fleet_gw(
        &s.iter().collect::<Vec<_>>(),
        "    hash_key: [\"header:x-session-id\"]\n    epsilon: 0.25\n    health: { enabled: false }\n",
    )
    .await;
    let (workers, per_worker) = (16, 25);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, url) = (client(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            for i in 0..per_worker {
                // Half the traffic carries one hot key; the rest is spread over many keys.
                let key = if (w + i) % 2 == 0 { "hot".to_string() } else { format!("cold-{w}-{i}") };
                let resp = c
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("x-session-id", key)
                    // Long enough that the 16 workers' requests overlap even on a loaded machine:
                    // the bound is on requests in flight, so the test needs them in flight together.
                    .header("x-sim-ttft-ms", "150")
                    .json(&body(false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                served.push(resp.headers()["x-mcas-replica"].to_str().unwrap().to_string());
                let _ = resp.bytes().await;
            }
            served
        }));
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for r in t.await.unwrap() {
            *count.entry(r).or_default() += 1;
        }
    }
    let total: usize = count.values().sum();
    let mean = total as f64 / 4.0;
    let max = *count.values().max().unwrap() as f64;
    eprintln!("bounded load: {count:?}");
    assert!(max <= 1.25 * mean, "max {max} > 1.25 × mean {mean}: {count:?}");
}

#[tokio::test]
async fn round_robin_and_least_inflight_behave_as_named() {
    let s = sims(3, &[]).await;
    let refs: Vec<&Proc> = s.iter().collect();
    let gw = fleet_gw(&refs, "    balance: round_robin\n").await;
    let c = client();
    let mut seq = Vec::new();
    for _ in 0..9 {
        let (status, r) = ask(&c, &gw, &[]).await;
        assert_eq!(status, 200);
        seq.push(r);
    }
    for i in 3..9 {
        assert_eq!(seq[i], seq[i - 3], "not a cycle: {seq:?}");
    }
    assert!(seq[0] != seq[1] && seq[1] != seq[2] && seq[0] != seq[2], "{seq:?}");
    drop(gw);

    let gw = fleet_gw(&refs[..2], "    balance: least_inflight\n").await;
    let (c2, url) = (client(), gw.url("/v1/chat/completions"));
    let slow = tokio::spawn(async move {
        let resp =
            c2.post(url).bearer_auth(KEY).header("x-sim-ttft-ms", "1500").json(&body(false)).send().await.unwrap();
        resp.headers()["x-mcas-replica"].to_str().unwrap().to_string()
    });
    wait_for("the slow request in flight", Duration::from_secs(5), async || {
        let h = health(&gw).await;
        h["providers"][0]["backends"].as_array().unwrap().iter().any(|b| b["inflight"] == 1)
    })
    .await;
    let mut quick = Vec::new();
    for _ in 0..6 {
        let (status, r) = ask(&c, &gw, &[]).await;
        assert_eq!(status, 200);
        quick.push(r);
    }
    let busy = slow.await.unwrap();
    assert!(quick.iter().all(|r| *r != busy), "a quick request went to the busy replica {busy}: {quick:?}");
}

#[tokio::test]
async fn refused_connection_is_retried_on_another_replica() {
    let s = sims(2, &[]).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let list = format!("[\"{dead}\", \"{}\", \"{}\"]", s[0].addr, s[1].addr);
    let extra = "    health: { enabled: false }\n    circuit: { failures: 1000 }\n    retries: 2\n";
    let gw = spawn_gateway("", &fleet_yaml(&list, extra), &[]).await;
    let c = client();
    for k in 0..30 {
        let (status, r) = ask(&c, &gw, &[("x-session-id", &format!("k{k}"))]).await;
        assert_eq!(status, 200, "request {k} failed");
        assert!(r == "r0" || r == "r1");
    }
    assert!(metric(&gw, "mcas_upstream_retries_total").await >= 1.0, "no request was retried");
}

#[tokio::test]
async fn circuit_opens_and_recovers() {
    let s = sims(1, &[]).await;
    let extra = "    health: { enabled: false }\n    circuit: { failures: 3, window: 10s, cooldown: 500ms }\n";
    let gw = fleet_gw(&[&s[0]], extra).await;
    let addr = s[0].addr.to_string();
    let c = client();
    for _ in 0..3 {
        let (status, _) = ask(&c, &gw, &[("x-sim-status", "500")]).await;
        assert_eq!(status, 500);
    }
    assert_eq!(backend_state(&gw, "vllm", &addr).await["circuit"], "open");
    let t0 = Instant::now();
    let resp = c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "service_unavailable");
    // At once: no connect attempt, no timeout (slack for a loaded test machine).
    assert!(t0.elapsed() < Duration::from_millis(1000), "503 was not immediate");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = ask(&c, &gw, &[]).await;
    assert_eq!(status, 200, "the half-open probe should go through");
    assert_eq!(backend_state(&gw, "vllm", &addr).await["circuit"], "closed");
    for state in ["open", "half_open", "closed"] {
        let m = metric(
            &gw,
            &format!("mcas_circuit_transitions_total{{backend=\"{addr}\",provider=\"vllm\",state=\"{state}\"}}"),
        )
        .await;
        assert_eq!(m, 1.0, "transitions to {state}");
    }
}

#[tokio::test]
async fn killed_replica_is_marked_down_and_only_its_streams_fail() {
    let mut s: Vec<Option<Proc>> = sims(3, &[]).await.into_iter().map(Some).collect();
    let refs: Vec<&Proc> = s.iter().map(|p| p.as_ref().unwrap()).collect();
    let extra = "    health: { interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 1 }\n";
    let gw = fleet_gw(&refs, extra).await;
    let victim = s[0].as_ref().unwrap().addr.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (c, url, stop) = (client(), gw.url("/v1/chat/completions"), stop.clone());
        tasks.push(tokio::spawn(async move {
            // (requests, failures before any response (when), replica of each stream cut mid-way)
            let (mut n, mut early, mut cut) = (0, Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let resp = c
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("x-session-id", format!("w{w}-{n}"))
                    .header("x-sim-tokens", "5")
                    .header("x-sim-itl-ms", "20")
                    .json(&body(true))
                    .send()
                    .await;
                let resp = match resp {
                    Ok(r) if r.status() == 200 => r,
                    Ok(r) => {
                        early.push((Instant::now(), format!("status {}", r.status())));
                        continue;
                    }
                    Err(e) => {
                        early.push((Instant::now(), e.to_string()));
                        continue;
                    }
                };
                let replica = resp.headers()["x-mcas-replica"].to_str().unwrap().to_string();
                let mut text = String::new();
                let mut stream = resp.bytes_stream();
                let mut broken = false;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                if broken || !text.trim_end().ends_with("data: [DONE]") {
                    cut.push(replica);
                }
            }
            (n, early, cut)
        }));
    }
    // Non-streamed requests beside them: each worker has at most one in flight, so at most one
    // per worker can have been on the killed replica, and only at the moment of the kill.
    let mut quick = Vec::new();
    for w in 0..3 {
        let (c, url, stop) = (client(), gw.url("/v1/chat/completions"), stop.clone());
        quick.push(tokio::spawn(async move {
            let (mut n, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let resp = c
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("x-session-id", format!("q{w}-{n}"))
                    .header("x-sim-tokens", "2")
                    .json(&body(false))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => failed.push((Instant::now(), format!("status {}", r.status()))),
                    Err(e) => failed.push((Instant::now(), e.to_string())),
                }
            }
            (n, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    drop(s[0].take());
    let took = wait_for("the killed replica marked down", Duration::from_secs(3), async || {
        backend_state(&gw, "vllm", &victim).await["healthy"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (n, early, cut) = t.await.unwrap();
        eprintln!("worker: {n} requests, early failures {early:?}, cut streams {cut:?}");
        total += n;
        // A request being written to the replica when it died fails (its bytes went upstream, so
        // it is not retried): at most the one in flight, answered right at the kill.
        let early: Vec<_> = early.iter().map(|(at, why)| (at.saturating_duration_since(killed_at), why)).collect();
        assert!(early.len() <= 1, "requests failed before streaming: {early:?}");
        assert!(early.iter().all(|(after, _)| *after < Duration::from_millis(200)), "failed after the kill: {early:?}");
        assert!(cut.iter().all(|r| r == "r0"), "a stream from a live replica was cut: {cut:?}");
    }
    eprintln!("marked down after {took:?}");
    assert!(total > 50, "too little load: {total}");
    for t in quick {
        let (n, failed) = t.await.unwrap();
        eprintln!("quick worker: {n} requests, failed {failed:?}");
        assert!(n > 50, "too little load: {n}");
        assert!(failed.len() <= 1, "more than the one request in flight at the kill failed: {failed:?}");
        for (at, why) in &failed {
            let after = at.saturating_duration_since(killed_at);
            assert!(after < Duration::from_millis(200), "{why} at {after:?} after the kill");
        }
    }
    // Two failed probes 200 ms apart (plus the time to the next probe and its timeout).
    // Expected ~400 ms: two failed probes 200 ms apart (slack for a loaded test machine).
    assert!(took < Duration::from_millis(1200), "marked down after {took:?}");
    assert!(metric(&gw, "mcas_health_transitions_total").await >= 1.0);
}

#[tokio::test]
async fn all_down_answers_503_at_once_unless_a_fallback_serves() {
    let s = sims(1, &["--models", "model-a,model-b,spare-only"]).await;
    let (d1, d2) = (free_port(), free_port());
    let probe = "health: { interval: 100ms, timeout: 100ms, unhealthy_after: 1 }";
    let yaml = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n\
         \x20 - {{ name: a, url: \"http://a.internal\", models: [model-a], backends: [\"127.0.0.1:{d1}\"], {probe}, fallbacks: [spare] }}\n\
         \x20 - {{ name: b, url: \"http://b.internal\", models: [model-b], backends: [\"127.0.0.1:{d2}\"], {probe} }}\n\
         \x20 - {{ name: spare, url: \"http://spare.internal\", models: [spare-only], backends: [\"{}\"] }}\n",
        s[0].addr
    );
    let gw = spawn_gateway("", &yaml, &[]).await;
    wait_for("both dead providers down", Duration::from_secs(3), async || {
        let h = health(&gw).await;
        h["providers"][0]["healthy"] == false && h["providers"][1]["healthy"] == false
    })
    .await;
    let c = client();
    let send = |model: &str| {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let resp = send("model-a").await.unwrap();
    assert_eq!(resp.status(), 200, "the fallback should serve");
    assert_eq!(resp.headers()["x-mcas-replica"], "r0");
    let t0 = Instant::now();
    let resp = send("model-b").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(t0.elapsed() < Duration::from_millis(1000), "503 was not immediate");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "service_unavailable");
}

#[tokio::test]
async fn probes_send_the_provider_key() {
    let s = sims(1, &["--api-key", PROVIDER_KEY, "--health-requires-key"]).await;
    let addr = s[0].addr;
    let yaml = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n\
         \x20 - {{ name: good, url: \"http://x\", api_key: \"{PROVIDER_KEY}\", backends: [\"{addr}\"], health: {{ interval: 100ms, unhealthy_after: 1 }} }}\n\
         \x20 - {{ name: bad, url: \"http://x\", api_key: \"wrong\", backends: [\"{addr}\"], health: {{ interval: 100ms, unhealthy_after: 1 }} }}\n"
    );
    let gw = spawn_gateway("", &yaml, &[]).await;
    let a = addr.to_string();
    wait_for("the wrong key marked down", Duration::from_secs(3), async || {
        backend_state(&gw, "bad", &a).await["healthy"] == false
    })
    .await;
    let good = backend_state(&gw, "good", &a).await;
    assert_eq!(good["healthy"], true, "{good}");
    assert_eq!(good["consecutive_failures"], 0, "{good}");
}

#[tokio::test]
async fn reload_adds_and_removes_backends_moving_few_keys() {
    let s = sims(3, &[]).await;
    let extra = "    hash_key: [\"header:x-session-id\"]\n    epsilon: off\n";
    let gw = spawn_gateway_with_admin_token("", &fleet_yaml(&backends(&[&s[0], &s[1]]), extra), &[]).await;
    let c = client();
    let keys: Vec<String> = (0..120).map(|k| format!("user-{k}")).collect();
    let owners = async |gw: &Gw| {
        let mut out = Vec::new();
        for k in &keys {
            let (status, r) = ask(&c, gw, &[("x-session-id", k)]).await;
            assert_eq!(status, 200);
            out.push(r);
        }
        out
    };
    let reload = async |gw: &Gw, from: &[&Proc], to: &[&Proc]| {
        let text = std::fs::read_to_string(&gw.config).unwrap();
        let next = text.replace(&backends(from), &backends(to));
        assert_ne!(text, next);
        std::fs::write(&gw.config, next).unwrap();
        let resp = client().post(gw.admin_url("/reload")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    };
    let two = owners(&gw).await;
    reload(&gw, &[&s[0], &s[1]], &[&s[0], &s[1], &s[2]]).await;
    let three = owners(&gw).await;
    let moved: Vec<_> = two.iter().zip(&three).filter(|(a, b)| a != b).collect();
    assert!(moved.iter().all(|(_, b)| *b == "r2"), "keys moved between old replicas: {moved:?}");
    assert!((15..70).contains(&moved.len()), "{} of 120 keys moved to the new replica", moved.len());
    reload(&gw, &[&s[0], &s[1], &s[2]], &[&s[0], &s[2]]).await;
    let after = owners(&gw).await;
    for (before, now) in three.iter().zip(&after) {
        if before != "r1" {
            assert_eq!(before, now, "a key of a remaining replica moved");
        }
    }
    let h = health(&gw).await;
    let listed: Vec<_> =
        h["providers"][0]["backends"].as_array().unwrap().iter().map(|b| b["address"].clone()).collect();
    assert_eq!(listed, vec![json!(s[0].addr.to_string()), json!(s[2].addr.to_string())]);
}

#[test]
fn fleet_config_errors_name_their_path() {
    let base = "keys:\n  - { name: a, key: k, models: [\"*\"] }\nproviders:\n".to_string();
    let cases = [
        ("  - { name: p, url: \"http://127.0.0.1:9\", balance: random }\n", "providers[0].balance"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", hash_key: [cookie] }\n", "providers[0].hash_key[0]"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", epsilon: -1 }\n", "providers[0].epsilon"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", fallbacks: [ghost] }\n", "providers[0].fallbacks[0]"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", fallbacks: [p] }\n", "providers[0].fallbacks[0]"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", health: { interval: 0s } }\n", "providers[0].health.interval"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", health: { path: health } }\n", "providers[0].health.path"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", circuit: { failures: 0 } }\n", "providers[0].circuit.failures"),
        ("  - { name: p, url: \"http://127.0.0.1:9\", backends: [\"127.0.0.1:1\", \"127.0.0.1:1\"] }\n", "providers[0].backends[1]"),
        (
            "  - { name: p, url: \"http://127.0.0.1:9\" }\nroutes:\n  - { path: \"/v1/*\", provider: p }\n  - { path: \"/v1/**\", provider: p }\n",
            "routes[1].path",
        ),
    ];
    for (yaml, path) in cases {
        let (code, out) = check(&format!("{base}{yaml}"), &[]);
        assert_eq!(code, 1, "{yaml}: {out}");
        assert!(out.contains(path), "{yaml}: expected {path} in {out}");
    }
    let ok = "  - { name: p, url: \"http://127.0.0.1:9\", backends: [\"127.0.0.1:1\", { address: \"127.0.0.1:2\", weight: 2 }], \
              balance: least_inflight, hash_key: [\"header:x-session-id\", prefix], epsilon: off, retries: 1, \
              health: { path: /ready, interval: 1s, timeout: 500ms, unhealthy_after: 3, healthy_after: 1 }, \
              circuit: { failures: 2, window: 5s, cooldown: 1s } }\n";
    let (code, out) = check(&format!("{base}{ok}"), &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn https_probes_use_the_sni_name_and_the_providers_ca() {
    let cert = crate::common::tls::TestCert::localhost();
    let s = sims(1, &[]).await;
    // Gateway A terminates TLS (and answers /health itself); B probes it as a fleet backend.
    let tls = cert.listen_yaml("");
    let inner = format!(
        "keys:\n  - {{ name: b, key: inner-key, models: [\"*\"] }}\nproviders:\n  - {{ name: sim, url: \"http://{}/v1\" }}\n",
        s[0].addr
    );
    let a = crate::common::gateway::spawn_gateway_admin_only(&tls, &inner).await;
    let backend = format!("127.0.0.1:{}", a.addr.port());
    let provider = |name: &str, tls: &str| {
        format!(
            "  - {{ name: {name}, url: \"https://localhost:{}/v1\", api_key: inner-key, backends: [\"{backend}\"], \
             health: {{ interval: 100ms, unhealthy_after: 1 }}{tls} }}\n",
            a.addr.port()
        )
    };
    let yaml = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\nproviders:\n{}{}",
        provider("trusted", &format!(", tls: {{ ca_file: \"{}\" }}", cert.cert_path.display())),
        provider("untrusted", "")
    );
    let gw = spawn_gateway("", &yaml, &[]).await;
    wait_for("the unverifiable backend marked down", Duration::from_secs(3), async || {
        backend_state(&gw, "untrusted", &backend).await["healthy"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let trusted = backend_state(&gw, "trusted", &backend).await;
    assert_eq!(trusted["healthy"], true, "{trusted}");
    assert_eq!(trusted["consecutive_failures"], 0, "{trusted}");
    let resp = client().post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
