//! Load benchmark (ignored by default): N concurrent idle event streams, then N idle WebSocket
//! tunnels, held through one gateway; prints the gateway's resident memory per connection and
//! the CPU it spends holding them.
//!
//! ```text
//! MCAS_BENCH_CONNS=9980 cargo test --release --test it streams_bench -- --ignored --nocapture
//! ```
//!
//! Every proxied connection costs the gateway two sockets; with the open-file limit of 20,000
//! that this machine's containers allow (not raisable, even as root: EPERM), one process tops
//! out just under 10,000 (about 30 descriptors are the gateway's own), hence 9,980 below.
//!
//! Other knobs: `MCAS_BENCH_PHASES` (comma-separated, default `sse,ws,hb`; each phase runs in a
//! gateway of its own, from a cold heap), `MCAS_BENCH_REPEAT=N` (repeat each phase N more
//! times: the memory of closed connections is reused — no growth in later rounds),
//! `MCAS_BENCH_WINDOW_S` (CPU sampling window, default 20), `MCAS_BENCH_GW_ENV=NAME=VALUE` (one
//! env var for the gateway).
//!
//! Measured 2026-11-22, release build, 2 shared vCPUs, gateway `threads: 1`, loopback, mcas-sim
//! as backend, `MCAS_BENCH_CONNS=9980`:
//!
//! | phase | RSS per connection | CPU holding them |
//! |---|---|---|
//! | idle SSE streams | 63.8 KiB | 0.35% of one core |
//! | idle WebSocket tunnels | 60.6 KiB | 0.35% |
//! | idle SSE streams on a `heartbeat` route (relay) | 66.3 KiB | 0.45% |
//! | 10,000 idle SSE streams over HTTP/2 (TLS listener, 100 streams per client connection) | 46.5 KiB | 0.45% |
//!
//! Over HTTP/2 the gateway holds one socket per stream (upstream) plus one per 100 streams, so
//! the `sse-h2` phase reaches 10,000 (`MCAS_BENCH_PHASES=sse-h2 MCAS_BENCH_CONNS=10000`).
//!
//! What is left is mostly Pingora's per-connection state: its boxed session future (~16 KiB),
//! the task (~9 KiB), header buffers (4 KiB each) and 64 KiB body buffers, resident as far as
//! they were touched. The client listeners run without Pingora's 64 KiB L4 read buffer (it
//! would be resident per idle connection: 123.7 KiB per SSE stream with it), mimalloc is built
//! without transparent huge pages (with them an idle stream cost 188.6 KiB), and tunnels keep
//! no HTTP client session: their backend reads start at 2 KiB.

use crate::common::gateway::{key_yaml, spawn_gateway, Gw};
use crate::common::spawn_sim;
use crate::common::tls::TestCert;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "client-key-bench-0123";

fn conns() -> usize {
    std::env::var("MCAS_BENCH_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(9980)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Opens one connection, sends `req`, reads until `until` appears; returns the socket.
async fn open(addr: std::net::SocketAddr, req: String, until: &'static [u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(until.len()).any(|w| w == until) {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Opens `n` raw HTTP/1.1 connections (250 at a time), each sending what `make` gives.
async fn open_raw(addr: std::net::SocketAddr, n: usize, make: impl Fn() -> (String, &'static [u8])) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(250);
        let futs: Vec<_> = (0..batch)
            .map(|_| {
                let (req, until) = make();
                open(addr, req, until)
            })
            .collect();
        socks.extend(futures_util::future::join_all(futs).await);
        i += batch;
    }
    socks
}

/// Opens `n` idle event streams over HTTP/2 (TLS), 100 per connection (the gateway's
/// stream limit per connection): one client per connection, each holding its responses.
async fn open_h2(
    url: String,
    ca: reqwest::Certificate,
    n: usize,
    body: &'static str,
) -> Vec<(reqwest::Client, Vec<reqwest::Response>)> {
    let per_conn = 100;
    let mut held = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(per_conn);
        let client = reqwest::Client::builder().add_root_certificate(ca.clone()).build().expect("client");
        let futs: Vec<_> = (0..k)
            .map(|_| {
                let req = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .header("x-sim-tokens", "2")
                    .header("x-sim-itl-ms", "3600000")
                    .body(body);
                async move {
                    let mut resp = req.send().await.expect("send");
                    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
                    let first = tokio::time::timeout(Duration::from_secs(30), resp.chunk()).await;
                    assert!(matches!(first, Ok(Ok(Some(_)))), "no first event: {first:?}");
                    resp
                }
            })
            .collect();
        held.push((client.clone(), futures_util::future::join_all(futs).await));
        left -= k;
    }
    held
}

/// Opens `n` connections or streams with `open_all`, then reports the gateway's memory per
/// connection and the CPU it spends holding them.
async fn hold<T, Fut: std::future::Future<Output = Vec<T>>>(gw: &Gw, label: &str, n: usize, open_all: Fut) {
    let pid = gw.proc.pid();
    let rss0 = gw.proc.rss_kib();
    let t0 = Instant::now();
    let socks = open_all.await;
    assert!(!socks.is_empty());
    let opened_in = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = gw.proc.rss_kib();
    let cpu0 = cpu_seconds(pid);
    let window =
        Duration::from_secs(std::env::var("MCAS_BENCH_WINDOW_S").ok().and_then(|v| v.parse().ok()).unwrap_or(20));
    tokio::time::sleep(window).await;
    let cpu1 = cpu_seconds(pid);
    let rss2 = gw.proc.rss_kib();
    let per_conn = (rss2.max(rss1) as f64 - rss0 as f64) * 1024.0 / n as f64;
    println!(
        "BENCH {label}: {n} held (opened in {:.1?}); gateway RSS {rss0} KiB -> {rss2} KiB: {:.1} KiB per connection; CPU while holding: {:.2}% of one core ({:.3} s over {:?})",
        opened_in,
        per_conn / 1024.0,
        (cpu1 - cpu0) / window.as_secs_f64() * 100.0,
        cpu1 - cpu0,
        window
    );
    drop(socks);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = reqwest::get(gw.admin_url("/metrics")).await.map(|r| r.text());
    let inflight = match metrics {
        Ok(text) => text
            .await
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("mcas_inflight_requests"))
            .unwrap_or("")
            .to_string(),
        Err(e) => e.to_string(),
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    println!("BENCH {label}: after closing all, gateway RSS {} KiB; {inflight}; open fds {fds}", gw.proc.rss_kib());
}

/// A gateway serving TLS (HTTP/2 by ALPN) with a generated certificate; the CA for clients.
async fn tls_gateway(rest: &str, envs: &[(&str, &str)]) -> (Gw, reqwest::Certificate, TestCert) {
    let cert = TestCert::localhost();
    let gw = crate::common::gateway::spawn_gateway_admin_only_with_env(&cert.listen_yaml(""), rest, envs).await;
    (gw, cert.ca(), cert)
}

/// The phases to run, from `MCAS_BENCH_PHASES` (comma-separated): `sse`, `ws`, `hb`, `sse-h2`.
fn phases() -> Vec<String> {
    let v = std::env::var("MCAS_BENCH_PHASES").unwrap_or_else(|_| "sse,ws,hb,sse-h2".into());
    v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load benchmark: run explicitly (see the module docs)"]
async fn streams_bench_idle_connections() {
    let n = conns();
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "{}providers:\n  - {{ name: sim, url: \"http://{}\", models: [\"*\"] }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n  - {{ path: \"/hb/v1/*\", provider: sim, strip_prefix: \"/hb\", heartbeat: 60s }}\n  - {{ path: \"/ws\", provider: sim, websocket: true }}\n",
        key_yaml("bench", KEY),
        sim.addr
    );
    // Optional allocator tuning under test, e.g. MCAS_BENCH_GW_ENV=MIMALLOC_PURGE_DELAY=0.
    let env_kv = std::env::var("MCAS_BENCH_GW_ENV").unwrap_or_default();
    let envs: Vec<(&str, &str)> = env_kv.split_once('=').into_iter().collect();
    println!("BENCH gateway env: {env_kv:?}");
    println!(
        "BENCH machine: {} CPUs; gateway threads: 1; debug_assertions: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cfg!(debug_assertions)
    );
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"sim-model","stream":true}"#;
    let sse = |path: &'static str| {
        move || {
            let req = format!(
                "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\nx-sim-tokens: 2\r\nx-sim-itl-ms: 3600000\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            (req, &b"\"content\""[..])
        }
    };
    let ws = || {
        let req = format!(
            "GET /ws HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        (req, &b"\r\n\r\n"[..])
    };
    // Same load again (`MCAS_BENCH_REPEAT`): shows whether the memory of closed connections
    // is reused (no leak).
    let repeat: usize = std::env::var("MCAS_BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    // Each phase in a gateway of its own, so each starts from a cold heap.
    for phase in phases() {
        if phase == "sse-h2" {
            let (gw, ca, _dir) = tls_gateway(&rest, &envs).await;
            let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
            for round in 0..=repeat {
                let label = format!("idle SSE streams over HTTP/2 (TLS, 100 per connection), round {}", round + 1);
                hold(&gw, &label, n, open_h2(url.clone(), ca.clone(), n, body)).await;
            }
            continue;
        }
        let gw = spawn_gateway("", &rest, &envs).await;
        for round in 0..=repeat {
            let label = |what: &str| if round == 0 { what.to_string() } else { format!("{what}, round {}", round + 1) };
            match phase.as_str() {
                "sse" => {
                    hold(&gw, &label("idle SSE streams"), n, open_raw(gw.addr, n, sse("/v1/chat/completions"))).await
                }
                "ws" => hold(&gw, &label("idle WebSocket tunnels"), n, open_raw(gw.addr, n, ws)).await,
                "hb" => {
                    let streams = open_raw(gw.addr, n, sse("/hb/v1/chat/completions"));
                    hold(&gw, &label("idle SSE streams via the heartbeat relay"), n, streams).await
                }
                other => panic!("unknown phase {other:?} in MCAS_BENCH_PHASES (sse, ws, hb, sse-h2)"),
            }
        }
    }
}
