//! What authentication plus limits cost per request. Two parts:
//!
//! 1. In process: ns per request for the auth step alone (credential parsing, SHA-256,
//!    table lookup, constant-time compare) and for auth + every limit step the request path
//!    runs (per-address guard, per-key rpm/tpm/concurrency admission, the `x-ratelimit-*`
//!    headers, token charge and slot release), over a table of 10,000 keys.
//! 2. Over the wire: two `mcas-gateway` processes (1 worker thread each) in front of one
//!    `mcas-sim`, one with no `limits:` (and the address guard off: the foundation's request
//!    path), one with per-key and per-address limits configured (never reached). 32 keep-alive
//!    connections, 5 s per round, the two alternated for 3 rounds; median req/s and gateway
//!    CPU µs per request (utime + stime from /proc/PID/stat).
//!
//! 3. Local vs Redis (`LIMITS_BENCH_REDIS=1`, needs `redis-server`): the two gateways both
//!    have the same per-key limits (`LIMITS_BENCH_KEY_LIMITS`, default rpm + tpm +
//!    concurrency), one counting locally, one with `limits.store` on a `redis-server` the
//!    bench starts; CPU µs per request and p50 / p99 latency per request, same run.
//!
//! Run: `cargo bench --bench limits` (release build). `LIMITS_BENCH_SECS` and
//! `LIMITS_BENCH_ROUNDS` change the load part's length. The machine is shared and small
//! (2 cores for sim, gateway and load): compare the two columns of the same run, not absolute
//! numbers across runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcas::clock::now_ms;
use mcas::keys::{sha256, KeyEntry, KeyTable, ModelGlobs};
use mcas::limits::per_ip::{IpGuard, IpLimits};
use mcas::limits::KeyLimits;
use mcas::proxy::credentials::authenticate;
use pingora_http::RequestHeader;
use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEYS: usize = 10_000;

fn main() {
    // LIMITS_BENCH_SKIP_MICRO=1 runs only the load part.
    if std::env::var_os("LIMITS_BENCH_SKIP_MICRO").is_none() {
        micro();
    }
    load();
}

fn micro() {
    let limits = KeyLimits {
        rpm: Some(u64::MAX / 2),
        tpm: Some(u64::MAX / 2),
        concurrency: Some(1 << 30),
        window: Duration::from_secs(60),
    };
    let mut table = KeyTable::default();
    for i in 0..KEYS {
        let key = format!("sk-bench-{i:08}-0123456789abcdef");
        let e = KeyEntry::new(&format!("k{i}"), sha256(key.as_bytes()), ModelGlobs(vec!["*".into()]), None, None);
        table.insert(e.with_limits(limits));
    }
    let reqs: Vec<RequestHeader> = (0..1024)
        .map(|i| {
            let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
            let key = format!("sk-bench-{:08}-0123456789abcdef", (i * 9973) % KEYS);
            r.insert_header("authorization", format!("Bearer {key}")).unwrap();
            r
        })
        .collect();
    let guard = IpGuard::default();
    let ip_limits = IpLimits { rpm: Some(u64::MAX / 2), ..Default::default() };
    let ips: Vec<IpAddr> = (0..256u32).map(|i| IpAddr::V4((0x0a00_0000 + i).into())).collect();
    let n = 400_000;

    let run = |with_limits: bool| {
        let t = Instant::now();
        for i in 0..n {
            let req = &reqs[i % reqs.len()];
            if with_limits {
                guard.check(ips[i % ips.len()], &ip_limits, now_ms).unwrap();
            }
            let key = authenticate(req, &table).unwrap();
            if with_limits {
                let (slot, _) = key.state.admit(&key.limits, now_ms()).unwrap();
                let headers = key.state.snapshot(&key.limits, now_ms()).headers();
                black_box(&headers);
                drop(slot);
                key.state.charge(&key.limits, 42, now_ms());
            }
            black_box(&key);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    run(true); // warm up
    let (mut auth, mut both) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        auth.push(run(false));
        both.push(run(true));
    }
    let (auth, both) = (median(&mut auth), median(&mut both));
    println!("in process, {KEYS} keys, median of 3 × {n} requests:");
    println!("  auth only                  {auth:8.0} ns/request");
    println!("  auth + guard + key limits  {both:8.0} ns/request   (limits add {:.0} ns)", both - auth);

    // The six x-ratelimit-* headers added to a proxied response (Pingora re-parses each name
    // and keeps a case map beside the header map).
    let state = mcas::limits::KeyState::new();
    let hdr = |with: bool| {
        let t = Instant::now();
        for _ in 0..n {
            let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
            for (k, v) in [("content-type", "application/json"), ("content-length", "321"), ("x-mcas-replica", "r1")] {
                resp.append_header(k, v).unwrap();
            }
            if with {
                for (k, v) in state.snapshot(&limits, now_ms()).headers() {
                    resp.insert_header(k, v).unwrap();
                }
            }
            black_box(&resp);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    hdr(true);
    let (mut plain, mut limited) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(hdr(false));
        limited.push(hdr(true));
    }
    let (plain, limited) = (median(&mut plain), median(&mut limited));
    println!(
        "  response header, 3 headers {plain:8.0} ns; + 6 x-ratelimit-* {limited:8.0} ns (adds {:.0} ns)",
        limited - plain
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gateway(dir: &std::path::Path, name: &str, sim: u16, limits: &str) -> (Killed, u16) {
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", threads: 1, pid_file: \"/tmp/mcas-bench-{port}.pid\", upgrade_sock: \"/tmp/mcas-bench-{port}.sock\" }}\n\
         admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         log: {{ access_log: true, level: warn }}\n{limits}\
         keys:\n  - {{ name: bench, key: sk-bench-key, models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://127.0.0.1:{sim}/v1\", models: [\"*\"] }}\n"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mcas-gateway"))
        .args(["--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (Killed(child), port)
}

/// utime + stime of a process, in µs.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 1e6 / 100.0 // USER_HZ is 100 on Linux
}

const BODY: &str = r#"{"messages":[{"role":"user","content":"hello there"}],"model":"sim-model","max_tokens":1}"#;

/// Request latencies (µs) recorded while `measuring` is set.
type Latencies = Arc<std::sync::Mutex<Vec<u32>>>;

async fn connection(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    lat: Latencies,
) {
    let mut mine = Vec::new();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-bench-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        s.write_all(req.as_bytes()).await.unwrap();
        buf.clear();
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gateway closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = std::str::from_utf8(&buf[..end]).unwrap().to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("responses carry Content-Length");
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        if measuring.load(Ordering::Relaxed) {
            mine.push(t.elapsed().as_micros() as u32);
        }
    }
    lat.lock().unwrap().extend(mine);
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64 / 1000.0
}

/// (req/s, gateway CPU µs per request, p50 ms, p99 ms)
fn round(rt: &tokio::runtime::Runtime, port: u16, pid: u32, secs: u64) -> (f64, f64, f64, f64) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let lat: Latencies = Default::default();
    rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| tokio::spawn(connection(addr, stop.clone(), done.clone(), measuring.clone(), lat.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await; // warm up
        measuring.store(true, Ordering::Relaxed);
        let (n0, c0, t0) = (done.load(Ordering::Relaxed), cpu_us(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (n1, c1, t1) = (done.load(Ordering::Relaxed), cpu_us(pid), Instant::now());
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let n = (n1 - n0) as f64;
        let mut l = lat.lock().unwrap();
        (n / (t1 - t0).as_secs_f64(), (c1 - c0) / n, percentile(&mut l, 0.5), percentile(&mut l, 0.99))
    })
}

/// A `redis-server` on a free port, without persistence, for the local-vs-Redis comparison.
fn redis_server(dir: &std::path::Path) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_port(port);
    (Killed(child), port)
}

fn load() {
    let secs: u64 = std::env::var("LIMITS_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rounds: usize = std::env::var("LIMITS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let _sim = Killed(
        Command::new(env!("CARGO_BIN_EXE_mcas-sim"))
            .args(["--listen", &format!("127.0.0.1:{sim_port}"), "--prefix-cache-blocks", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(sim_port);
    let redis = std::env::var_os("LIMITS_BENCH_REDIS").map(|_| redis_server(dir.path()));
    let (labels, off, on) = match &redis {
        None => {
            let off = "limits: { per_ip: { auth_failures_per_min: 0 } }\n".to_string();
            let default_on = "limits: { defaults: { rpm: 1000000000, tpm: 1000000000000, concurrency: 10000 }, \
                              per_ip: { rpm: 1000000000, auth_failures_per_min: 20 } }";
            // LIMITS_BENCH_ON replaces the `limits:` line of the "with limits" gateway (to split the cost).
            let on = format!("{}\n", std::env::var("LIMITS_BENCH_ON").unwrap_or_else(|_| default_on.to_string()));
            (["without limits", "with limits"], off, on)
        }
        Some((_, port)) => {
            let key = std::env::var("LIMITS_BENCH_KEY_LIMITS")
                .unwrap_or_else(|_| "rpm: 1000000000, tpm: 1000000000000, concurrency: 10000".to_string());
            let local = format!("limits: {{ defaults: {{ {key} }} }}\n");
            let shared = format!("limits: {{ store: \"redis://127.0.0.1:{port}\", defaults: {{ {key} }} }}\n");
            println!("local vs Redis, per-key limits {{ {key} }}");
            (["local", "redis"], local, shared)
        }
    };
    let (gw_off, port_off) = gateway(dir.path(), "off", sim_port, &off);
    let (gw_on, port_on) = gateway(dir.path(), "on", sim_port, &on);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut rps_off, mut rps_on, mut cpu_off, mut cpu_on) = (vec![], vec![], vec![], vec![]);
    let (mut p_off, mut p_on) = (vec![], vec![]);
    let (mut rps_ratio, mut cpu_ratio) = (vec![], vec![]);
    let [lo, ln] = labels;
    for r in 0..rounds {
        // Odd rounds run "with" first: the machine is shared, so order must not favour either.
        let (a, c) = if r % 2 == 0 {
            let off = round(&rt, port_off, gw_off.0.id(), secs);
            (off, round(&rt, port_on, gw_on.0.id(), secs))
        } else {
            let on = round(&rt, port_on, gw_on.0.id(), secs);
            (round(&rt, port_off, gw_off.0.id(), secs), on)
        };
        println!(
            "round {}: {lo} {:8.0} req/s {:6.1} µs/req p50 {:.2} p99 {:.2} ms | {ln} {:8.0} req/s {:6.1} µs/req p50 {:.2} p99 {:.2} ms",
            r + 1, a.0, a.1, a.2, a.3, c.0, c.1, c.2, c.3
        );
        let _ = std::io::stdout().flush();
        rps_off.push(a.0);
        cpu_off.push(a.1);
        p_off.push((a.2, a.3));
        rps_on.push(c.0);
        cpu_on.push(c.1);
        p_on.push((c.2, c.3));
        rps_ratio.push(c.0 / a.0);
        cpu_ratio.push(c.1 / a.1);
    }
    let (ro, rn, co, cn) = (median(&mut rps_off), median(&mut rps_on), median(&mut cpu_off), median(&mut cpu_on));
    let p =
        |v: &[(f64, f64)], i: usize| median(&mut v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect::<Vec<_>>());
    println!("over the wire, 32 connections, {secs} s × {rounds} rounds alternated, medians:");
    println!("  |                | req/s    | gateway CPU µs/req | p50 ms | p99 ms |");
    println!("  | {lo:<15}| {ro:8.0} | {co:18.1} | {:6.2} | {:6.2} |", p(&p_off, 0), p(&p_off, 1));
    println!("  | {ln:<15}| {rn:8.0} | {cn:18.1} | {:6.2} | {:6.2} |", p(&p_on, 0), p(&p_on, 1));
    println!(
        "  {ln} / {lo}, median of the per-round ratios: throughput {:+.1}%, CPU per request {:+.1}%",
        (median(&mut rps_ratio) - 1.0) * 100.0,
        (median(&mut cpu_ratio) - 1.0) * 100.0
    );
    drop(redis);
}
