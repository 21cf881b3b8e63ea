//! DNS discovery against a real DNS server (Debian's dnsmasq, tests/common/dnsmasq.rs) whose
//! answers change while traffic flows: `mcas-sim` replicas on 127.0.0.2, .3, .4 (one port),
//! found through `providers[].discover`. Which replica served is read from `x-mcas-replica`.
//! The figures printed (time from a DNS change to traffic on the new replica, requests failed
//! during a removal) are reported, not asserted: no timing assertions in tests.

use crate::common::dnsmasq::{self, Dnsmasq};
use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::{free_port, spawn, spawn_sim, Proc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "client-key-0123456789";
const NAME: &str = "vllm.mcas.test";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// A sim with replica id `id` on `addr`.
async fn sim_at(addr: SocketAddr, id: &str, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--listen".into(), addr.to_string(), "--replica-id".into(), id.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = spawn(env!("CARGO_BIN_EXE_mcas-sim"), &args, &[], addr);
    p.wait_ready("/health").await.unwrap();
    p
}

fn hosts(last_octets: &[u8]) -> String {
    last_octets.iter().map(|o| format!("127.0.0.{o} {NAME}\n")).collect()
}

fn yaml(port: u16, discover: &str, extra: &str) -> String {
    format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - name: vllm\n    url: \"http://{NAME}:{port}/v1\"\n\
         \x20   discover: {discover}\n    health: {{ interval: 1s }}\n{extra}"
    )
}

/// Sims `r<o>` on 127.0.0.<o> for each of `sims` (one port for all), dnsmasq naming `NAME` at
/// 127.0.0.2 and .3, and a gateway discovering `NAME` every second (`extra`: more provider lines).
struct DnsFleet {
    port: u16,
    _sims: Vec<Proc>,
    dns: Dnsmasq,
    gw: Gw,
}

async fn dns_fleet(sims: &[u8], extra: &str) -> DnsFleet {
    let port = free_port();
    let mut procs = Vec::new();
    for &o in sims {
        procs.push(sim_at(SocketAddr::from(([127, 0, 0, o], port)), &format!("r{o}"), &[]).await);
    }
    let dns = Dnsmasq::start(&hosts(&[2, 3]), "");
    let discover = format!("{{ dns: \"{NAME}:{port}\", interval: 1s, resolver: \"{}\" }}", dns.addr());
    let gw = spawn_gateway("", &yaml(port, &discover, extra), &[]).await;
    DnsFleet { port, _sims: procs, dns, gw }
}

async fn health(gw: &Gw) -> Value {
    client().get(gw.admin_url("/health")).send().await.unwrap().json().await.unwrap()
}

/// Backend addresses of provider `vllm` in `/health`, sorted.
async fn backends(gw: &Gw) -> Vec<String> {
    let h = health(gw).await;
    let mut out: Vec<String> = h["providers"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// Polls `/health` until the backends are `want` (30 s at most).
async fn wait_backends(gw: &Gw, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = backends(gw).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "backends stayed {got:?}, want {want:?}: {}", health(gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": "sim-model", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

/// One non-streamed request with session `session`; (status, replica).
async fn ask(c: &reqwest::Client, gw: &Gw, session: &str) -> (u16, String) {
    let resp = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-session-id", session)
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    let replica = resp.headers().get("x-mcas-replica").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    (status, replica)
}

async fn placement(c: &reqwest::Client, gw: &Gw, sessions: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for s in sessions {
        let (status, replica) = ask(c, gw, s).await;
        assert_eq!(status, 200);
        out.insert(s.clone(), replica);
    }
    out
}

/// Requests sent one after another until stopped: every failure and the first time each
/// replica served, from the test's start.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_seen: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

fn traffic(gw: &Gw) -> Traffic {
    let (stop, sent, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first_seen = Arc::new(Mutex::new(HashMap::new()));
    let url = gw.url("/v1/chat/completions");
    let (s, n, f, seen) = (stop.clone(), sent.clone(), failed.clone(), first_seen.clone());
    let task = tokio::spawn(async move {
        let c = client();
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let resp =
                c.post(&url).bearer_auth(KEY).header("x-session-id", format!("t{i}")).json(&chat(false)).send().await;
            n.fetch_add(1, Ordering::Relaxed);
            match resp {
                Ok(r) if r.status() == 200 => {
                    let replica = r.headers().get("x-mcas-replica").map(|v| v.to_str().unwrap().to_string());
                    let _ = r.bytes().await;
                    if let Some(replica) = replica {
                        seen.lock().unwrap().entry(replica).or_insert_with(Instant::now);
                    }
                }
                _ => {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Traffic { stop, sent, failed, first_seen, task }
}

impl Traffic {
    fn seen(&self, replica: &str) -> Option<Instant> {
        self.first_seen.lock().unwrap().get(replica).copied()
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// When `replica` first served a request of `load` (30 s at most).
async fn first_request_on(load: &Traffic, replica: &str, gw: &Gw) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = load.seen(replica) {
            return t;
        }
        assert!(Instant::now() < deadline, "{replica} never took traffic: {}", health(gw).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A streamed request: (status, whether it ended with `[DONE]`, replica).
async fn stream(url: String, session: String) -> (u16, bool, String) {
    let resp = client()
        .post(url)
        .bearer_auth(KEY)
        .header("x-session-id", session)
        .header("x-sim-tokens", "100")
        .header("x-sim-itl-ms", "50")
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let replica = resp.headers().get("x-mcas-replica").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(c)) = chunks.next().await {
        body.extend_from_slice(&c);
    }
    (status, String::from_utf8_lossy(&body).contains("data: [DONE]"), replica)
}

/// A replica added to DNS takes traffic; a removed one stops taking new requests while its
/// streams in flight end normally; only about 1/n of the session keys move on each change.
#[tokio::test]
async fn replicas_join_and_leave_with_dns_while_traffic_flows() {
    if dnsmasq::skip() {
        return;
    }
    let DnsFleet { port, _sims, dns, gw } = dns_fleet(&[2, 3, 4], "    epsilon: off\n").await;
    let at = |o: u8| SocketAddr::from(([127, 0, 0, o], port));
    let addrs = |os: &[u8]| os.iter().map(|&o| at(o).to_string()).collect::<Vec<_>>();
    wait_backends(&gw, &addrs(&[2, 3])).await;
    let c = client();
    let sessions: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    let before = placement(&c, &gw, &sessions).await;

    // Added while requests flow.
    let load = traffic(&gw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = Instant::now();
    dns.set_hosts(&hosts(&[2, 3, 4]));
    let joined = first_request_on(&load, "r4", &gw).await.duration_since(changed);
    let after = placement(&c, &gw, &sessions).await;
    let moved = sessions.iter().filter(|s| before[*s] != after[*s]).count();
    assert!(sessions.iter().all(|s| before[s] == after[s] || after[s] == "r4"), "keys moved between old replicas");
    let share = moved as f64 / sessions.len() as f64;
    assert!((0.15..0.55).contains(&share), "{moved} of 300 keys moved to the new replica (want about 1/3)");

    // Removed while streams run on it and requests flow.
    let on_r2: Vec<String> = sessions.iter().filter(|s| after[*s] == "r2").take(3).cloned().collect();
    let others: Vec<String> = sessions.iter().filter(|s| after[*s] != "r2").take(3).cloned().collect();
    let streams: Vec<_> =
        on_r2.iter().chain(&others).map(|s| tokio::spawn(stream(gw.url("/v1/chat/completions"), s.clone()))).collect();
    // Wait until the streams run (their first bytes are out) before taking r2 out of DNS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dns.set_hosts(&hosts(&[3, 4]));
    wait_backends(&gw, &addrs(&[3, 4])).await;
    // The replicas that stayed kept their backend objects: the streams running on them (5 s
    // long) are still counted in flight.
    let h = health(&gw).await;
    let inflight: u64 =
        h["providers"][0]["backends"].as_array().unwrap().iter().map(|b| b["inflight"].as_u64().unwrap()).sum();
    assert!(inflight >= 1, "the streams on the remaining replicas are no longer counted: {h}");
    let last = placement(&c, &gw, &sessions).await;
    for s in &sessions {
        if after[s] == "r2" {
            assert_ne!(last[s], "r2", "a removed replica took a new request");
        } else {
            assert_eq!(last[s], after[s], "a key of a remaining replica moved");
        }
    }
    let (sent, failed) = load.finish().await;
    let mut served_by_r2 = 0;
    for s in streams {
        let (status, done, replica) = s.await.unwrap();
        assert_eq!((status, done), (200, true), "a stream in flight on {replica} did not end normally");
        served_by_r2 += usize::from(replica == "r2");
    }
    assert!(served_by_r2 >= 1, "no stream ran on the removed replica");
    eprintln!(
        "discovery figures: DNS change to first request on the added replica {} ms (interval 1s); \
         {failed} of {sent} requests sent during the addition and the removal failed, {served_by_r2} streams on the removed replica all ended normally; \
         {moved} of 300 keys moved on the addition",
        joined.as_millis()
    );
    assert_eq!(failed, 0, "requests failed while replicas joined and left");
}

/// A resolver that stops answering, then an answer with no address: the fleet stays as it
/// was, traffic goes on, and both are counted and shown in `/health`.
#[tokio::test]
async fn a_failing_or_empty_resolution_keeps_the_last_good_set() {
    if dnsmasq::skip() {
        return;
    }
    let DnsFleet { port, _sims, dns, gw } = dns_fleet(&[2, 3], "").await;
    let at = |o: u8| SocketAddr::from(([127, 0, 0, o], port));
    let want = vec![at(2).to_string(), at(3).to_string()];
    wait_backends(&gw, &want).await;
    let load = traffic(&gw);

    dns.pause();
    let failures = wait_discovery(&gw, |d| d["consecutive_failures"].as_u64().unwrap_or(0) >= 2).await;
    assert_eq!(failures["last_result"], "failed", "{failures}");
    assert_eq!(backends(&gw).await, want);
    dns.resume();
    wait_discovery(&gw, |d| d["consecutive_failures"] == 0).await;

    dns.set_hosts("");
    let empty = wait_discovery(&gw, |d| d["last_result"] == "empty").await;
    assert!(empty["failures"].as_u64().unwrap() >= 3, "{empty}");
    assert_eq!(backends(&gw).await, want);
    let metrics = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for result in ["failed", "empty"] {
        let line = format!("mcas_discovery_resolutions_total{{provider=\"vllm\",result=\"{result}\"}}");
        assert!(metrics.contains(&line), "{line} missing");
    }
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "requests failed while the resolver was down");
}

/// Polls the `discovery` object of provider `vllm` until `ok` holds (30 s at most).
async fn wait_discovery(gw: &Gw, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = health(gw).await["providers"][0]["discovery"].clone();
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "discovery state stayed {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SRV records give each target's port and weight; only the lowest priority is used.
#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    if dnsmasq::skip() {
        return;
    }
    let a = spawn_sim(&["--replica-id", "a"]).await;
    let b = spawn_sim(&["--replica-id", "b"]).await;
    let backup = spawn_sim(&["--replica-id", "backup"]).await;
    let conf = format!(
        "srv-host=_vllm._tcp.mcas.test,a.mcas.test,{},1,10\n\
         srv-host=_vllm._tcp.mcas.test,b.mcas.test,{},1,30\n\
         srv-host=_vllm._tcp.mcas.test,a.mcas.test,{},2,10\n",
        a.addr.port(),
        b.addr.port(),
        backup.addr.port()
    );
    let dns = Dnsmasq::start("127.0.0.1 a.mcas.test\n127.0.0.1 b.mcas.test\n", &conf);
    let discover = format!("{{ srv: \"_vllm._tcp.mcas.test\", resolver: \"{}\" }}", dns.addr());
    let gw = spawn_gateway("", &yaml(80, &discover, "    balance: round_robin\n"), &[]).await;
    wait_backends(&gw, &{
        let mut v = vec![a.addr.to_string(), b.addr.to_string()];
        v.sort();
        v
    })
    .await;
    let h = health(&gw).await;
    let weights: HashMap<String, u64> = h["providers"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!((weights[&a.addr.to_string()], weights[&b.addr.to_string()]), (10, 30));
    assert_eq!(h["providers"][0]["discovery"]["target"], "SRV _vllm._tcp.mcas.test");
    let c = client();
    let mut served = HashMap::new();
    for i in 0..8 {
        let (status, replica) = ask(&c, &gw, &format!("k{i}")).await;
        assert_eq!(status, 200);
        *served.entry(replica).or_insert(0) += 1;
    }
    assert!(served.contains_key("a") && served.contains_key("b") && !served.contains_key("backup"), "{served:?}");
}

/// A provider with neither `backends` nor `discover` follows its URL's host (here `localhost`
/// through the system's resolver and /etc/hosts) and keeps serving.
#[tokio::test]
async fn a_url_host_is_resolved_again() {
    let sim = spawn_sim(&["--replica-id", "only"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://localhost:{}/v1\" }}\n",
        sim.addr.port()
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let d = wait_discovery(&gw, |d| !d.is_null()).await;
    assert_eq!(d["target"], format!("localhost:{}", sim.addr.port()), "{d}");
    assert_eq!(d["resolver"], "system");
    assert!(d["last_result"] == "unchanged" || d["last_result"] == "changed", "{d}");
    assert!(backends(&gw).await.contains(&sim.addr.to_string()));
    assert_eq!(ask(&client(), &gw, "s").await, (200, "only".to_string()));
}
