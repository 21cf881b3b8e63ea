//! Load benchmark: `mcas-sim` direct vs `mcas-gateway` (`threads: 1`) vs nginx, both proxies in front of the
//! same `mcas-sim`, in one run with alternated rounds and medians. See docs/benchmarks.md.
//!
//! Run: `cargo bench --bench load`. Environment: `MCAS_BENCH_SECS` (seconds per round, default 5),
//! `MCAS_BENCH_ROUNDS` (default 3), `MCAS_BENCH_CONNS` (connections for the throughput workloads, default 32),
//! `MCAS_BENCH_NGINX` (path of the nginx binary; default `nginx` on PATH, then /usr/sbin/nginx),
//! `MCAS_BENCH_NO_PIN=1` (do not pin with taskset); for profiling, `MCAS_BENCH_TARGETS=gateway` and
//! `MCAS_BENCH_WORKLOADS=streamed` (comma lists) run only those, with no summary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const KEY: &str = "bench-key-0123456789";
const PLAIN_BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}],"model":"sim-model"}"#;
const STREAM_BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}],"model":"sim-model","stream":true}"#;
/// Tokens per completion in the throughput workloads (streamed and not).
const TOKENS: u32 = 16;
/// The TTFT workload: simulated time to first token and inter-token latency, and tokens per completion
/// (few, so that a round holds more samples; the figure measured is the time to the first token).
const TTFT_MS: u32 = 20;
const ITL_MS: u32 = 5;
const TTFT_TOKENS: u32 = 4;
/// Core of the load generator, and core of the servers (sim and proxy share it).
const GEN_CORE: &str = "0";
const SERVER_CORE: &str = "1";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Workload {
    Plain,
    Stream,
    Ttft,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Plain => "non-streamed",
            Workload::Stream => "streamed",
            Workload::Ttft => "ttft",
        }
    }

    fn body(self) -> Bytes {
        match self {
            Workload::Plain => Bytes::from_static(PLAIN_BODY.as_bytes()),
            Workload::Stream | Workload::Ttft => Bytes::from_static(STREAM_BODY.as_bytes()),
        }
    }

    /// Per-request simulator overrides: (tokens, ttft ms, itl ms).
    fn sim(self) -> (u32, u32, u32) {
        match self {
            Workload::Plain | Workload::Stream => (TOKENS, 0, 0),
            Workload::Ttft => (TTFT_TOKENS, TTFT_MS, ITL_MS),
        }
    }
}

/// Every child process, killed (SIGKILL) and reaped on drop, also when the bench panics.
#[derive(Default)]
struct Children {
    procs: Vec<(String, Child)>,
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Children {
    fn spawn(&mut self, name: &str, pin: bool, program: &Path, args: &[String], log: &Path) -> u32 {
        let out = File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(SERVER_CORE).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        let pid = child.id();
        self.procs.push((name.to_string(), child));
        pid
    }

    /// Panics with the log's tail if the named child has exited.
    fn check_alive(&mut self, name: &str, log: &Path) {
        for (n, child) in &mut self.procs {
            if n == name {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
                    panic!("{name} exited ({status}) during start-up; log {}:\n{tail}", log.display());
                }
            }
        }
    }
}

/// One blocking `GET path`; returns the status code.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut buf[n..]).ok()?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Polls `GET /health` until it answers `want` (any status if `None`), failing if the child exits.
fn wait_ready(children: &mut Children, name: &str, log: &Path, port: u16, want: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = http_get_status(port, "/health") {
            if want.is_none_or(|w| w == status) {
                return;
            }
        }
        children.check_alive(name, log);
        if Instant::now() > deadline {
            panic!("{name} not ready on 127.0.0.1:{port} after 30 s; log {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text.trim().to_string())
}

fn find_nginx() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MCAS_BENCH_NGINX") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&dir) {
            let p = d.join("nginx");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/sbin/nginx");
    p.is_file().then_some(p)
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------------------------
// Load generator

struct Target {
    name: &'static str,
    port: u16,
    /// The serving process: the sim itself for `sim`, else the proxy.
    pid: u32,
}

#[derive(Default)]
struct ConnStats {
    latency_us: Vec<u32>,
    ttft_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

struct Sample {
    latency_us: u32,
    ttft_us: Option<u32>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16) -> Result<Sender, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// True once `buf` holds a JSON `"content"` with a non-empty string value (a role-only first chunk
/// with `"content":""` does not count).
fn has_content(buf: &[u8]) -> bool {
    let pat = b"\"content\":";
    let mut i = 0;
    while let Some(pos) = buf[i..].windows(pat.len()).position(|w| w == pat) {
        let mut j = i + pos + pat.len();
        while j < buf.len() && buf[j] == b' ' {
            j += 1;
        }
        if j + 1 < buf.len() && buf[j] == b'"' && buf[j + 1] != b'"' {
            return true;
        }
        i = i + pos + 1;
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn one_request(sender: &mut Sender, port: u16, workload: Workload) -> Result<Sample, String> {
    let (tokens, ttft, itl) = workload.sim();
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-sim-tokens", tokens)
        .header("x-sim-ttft-ms", ttft)
        .header("x-sim-itl-ms", itl)
        .body(Full::new(workload.body()))
        .unwrap();
    sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let t0 = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut ttft_us = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if workload != Workload::Plain && ttft_us.is_none() && has_content(&buf) {
                ttft_us = Some(t0.elapsed().as_micros() as u32);
            }
        }
    }
    let latency_us = t0.elapsed().as_micros() as u32;
    let ok = status == 200
        && match workload {
            Workload::Plain => contains(&buf, b"\"choices\""),
            Workload::Stream | Workload::Ttft => contains(&buf[buf.len().saturating_sub(64)..], b"[DONE]"),
        };
    if !ok {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(400)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    Ok(Sample { latency_us, ttft_us })
}

/// One connection: connect, one warm-up request, wait for the start, then request → full response until the
/// deadline. A failed request is counted and the connection reopened.
async fn conn_loop(port: u16, workload: Workload, start: Arc<Barrier>, dur: Duration) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut sender = connect(port).await.ok();
    if let Some(s) = sender.as_mut() {
        if one_request(s, port, workload).await.is_err() {
            sender = None;
        }
    }
    start.wait().await;
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        if sender.is_none() {
            match connect(port).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        match one_request(s, port, workload).await {
            Ok(sample) => {
                stats.latency_us.push(sample.latency_us);
                if let Some(t) = sample.ttft_us {
                    stats.ttft_us.push(t);
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
                sender = None;
            }
        }
    }
    stats
}

struct RoundResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    /// CPU µs per request of the serving process (the sim for `sim`, the proxy otherwise).
    cpu_us: f64,
    /// CPU µs per request of the sim (the upstream), for every target.
    sim_cpu_us: f64,
    requests: u64,
    errors: u64,
}

fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

async fn run_round(
    target: &Target,
    sim_pid: u32,
    workload: Workload,
    conns: usize,
    dur: Duration,
    tck: u64,
) -> RoundResult {
    let start = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> =
        (0..conns).map(|_| tokio::spawn(conn_loop(target.port, workload, start.clone(), dur))).collect();
    start.wait().await;
    let cpu0 = cpu_ticks(target.pid);
    let sim0 = cpu_ticks(sim_pid);
    let t0 = Instant::now();
    let mut all = ConnStats::default();
    for h in handles {
        let s = h.await.unwrap();
        all.latency_us.extend(s.latency_us);
        all.ttft_us.extend(s.ttft_us);
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(target.pid);
    let sim1 = cpu_ticks(sim_pid);
    if let Some(e) = &all.first_error {
        eprintln!("  {} {}: {} errors, first: {e}", target.name, workload.label(), all.errors);
    }
    all.latency_us.sort_unstable();
    all.ttft_us.sort_unstable();
    let n = all.latency_us.len() as u64;
    let per_req = |ticks: u64| if n == 0 { f64::NAN } else { ticks as f64 * 1e6 / tck as f64 / n as f64 };
    RoundResult {
        rps: n as f64 / elapsed,
        p50_ms: percentile_ms(&all.latency_us, 0.50),
        p99_ms: percentile_ms(&all.latency_us, 0.99),
        ttft_p50_ms: percentile_ms(&all.ttft_us, 0.50),
        ttft_p99_ms: percentile_ms(&all.ttft_us, 0.99),
        cpu_us: per_req(cpu1 - cpu0),
        sim_cpu_us: per_req(sim1 - sim0),
        requests: n,
        errors: all.errors,
    }
}

/// One request of each kind through `port`, panicking with the answer if it is not a good one.
async fn precheck(target: &Target) {
    for w in [Workload::Plain, Workload::Stream] {
        let mut s = connect(target.port).await.unwrap_or_else(|e| panic!("{}: {e}", target.name));
        if let Err(e) = one_request(&mut s, target.port, w).await {
            panic!("{} answered a {} request badly: {e}", target.name, w.label());
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

struct Summary {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    cpu_us: f64,
    sim_cpu_us: f64,
    requests: u64,
    errors: u64,
}

fn summarize(rounds: &[RoundResult]) -> Summary {
    let med = |f: fn(&RoundResult) -> f64| median(rounds.iter().map(f).collect());
    Summary {
        rps: med(|r| r.rps),
        p50_ms: med(|r| r.p50_ms),
        p99_ms: med(|r| r.p99_ms),
        ttft_p50_ms: med(|r| r.ttft_p50_ms),
        ttft_p99_ms: med(|r| r.ttft_p99_ms),
        cpu_us: med(|r| r.cpu_us),
        sim_cpu_us: med(|r| r.sim_cpu_us),
        requests: rounds.iter().map(|r| r.requests).sum(),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Setup and report

fn gateway_config(dir: &Path, gw: u16, admin: u16, sim: u16) -> PathBuf {
    let path = dir.join("gateway.yaml");
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:{gw}", threads: 1, pid_file: /tmp/mcas-bench.pid, upgrade_sock: /tmp/mcas-bench.sock }}
admin: {{ listen: "127.0.0.1:{admin}" }}
keys:
  - {{ name: bench, key: "{KEY}", models: ["*"] }}
providers:
  - {{ name: vllm, url: "http://127.0.0.1:{sim}/v1", models: ["*"] }}
log: {{ access_log: false }}
"#
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn nginx_config(dir: &Path, port: u16, sim: u16) -> PathBuf {
    let d = dir.display();
    let path = dir.join("nginx.conf");
    let conf = format!(
        r#"worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream sim {{
        server 127.0.0.1:{sim};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://sim;
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    std::fs::write(&path, conf).unwrap();
    path
}

fn f(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "-".to_string()
    } else {
        format!("{x:.prec$}")
    }
}

fn main() {
    let secs: f64 = env_num("MCAS_BENCH_SECS", 5.0);
    let rounds: usize = env_num("MCAS_BENCH_ROUNDS", 3usize).max(1);
    let conns: usize = env_num("MCAS_BENCH_CONNS", 32usize).max(1);
    let dur = Duration::from_secs_f64(secs);
    let nproc = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores: usize = nproc.parse().unwrap_or(1);
    let pin = std::env::var("MCAS_BENCH_NO_PIN").is_err()
        && cores >= 2
        && command_output("taskset", &["-V"]).is_some_and(|v| v.contains("taskset"));
    let tck = clock_ticks_per_sec();
    let nginx = find_nginx();
    let nginx_version = nginx.as_ref().and_then(|p| command_output(&p.display().to_string(), &["-v"]));
    let commit = command_output("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]);
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    let load = |tag: &str| {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average {tag}: {}", l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    };

    println!("# MCAS load benchmark: sim direct vs gateway vs nginx\n");
    println!("hardware: {nproc} CPUs ({cpu_model}), Linux {kernel}");
    println!("gateway commit: {}", commit.as_deref().unwrap_or("?"));
    println!(
        "nginx: {}",
        match (&nginx, &nginx_version) {
            (Some(p), Some(v)) => format!("{} ({v})", p.display()),
            _ => "not installed: column skipped (install with `apt-get install -y nginx`)".to_string(),
        }
    );
    println!(
        "method: per workload, rounds of {secs} s alternate sim, gateway, nginx ({rounds} rounds each); figures are \
         medians over rounds. Load generator: hyper 1 HTTP/1.1 client on one tokio thread, keep-alive connections, \
         each looping request → full response; latency = send → last body byte. CPU/req = Δ(utime+stime) of the \
         serving process from /proc/PID/stat (tick = {} µs) over the round ÷ requests completed.",
        1_000_000 / tck
    );
    println!(
        "workloads: non-streamed POST /v1/chat/completions ({TOKENS} tokens) at {conns} connections; streamed \
         ({TOKENS} tokens, no delays) at {conns} connections; TTFT at 1 connection with x-sim-ttft-ms {TTFT_MS}, \
         x-sim-itl-ms {ITL_MS}, {TTFT_TOKENS} tokens: time from send to the first body chunk with a non-empty \
         \"content\"."
    );
    if pin {
        println!(
            "pinning: load generator on core {GEN_CORE}; mcas-sim and the proxy under test share core {SERVER_CORE} \
             (for `sim` direct the sim has core {SERVER_CORE} to itself; behind a proxy both compete for it)."
        );
    } else {
        println!("pinning: none (taskset missing, fewer than 2 CPUs, or MCAS_BENCH_NO_PIN set); all share all cores.");
    }
    println!(
        "caveats: a shared 2-core machine (other builds may run: see load averages); loopback only; one proxy \
         thread/worker each (gateway threads: 1, nginx worker_processes 1, master_process off); nginx \
         keepalive_requests raised to 1000000 (client and upstream) so neither side recycles connections; CPU \
         ticks are 10 ms so short rounds have coarse CPU figures; the gateway's CPU includes its admin listener \
         and background threads (idle here)."
    );
    load("at start");
    println!();

    if pin {
        // Before any thread exists, so that the runtime's threads inherit the mask.
        let me = std::process::id().to_string();
        let ok = Command::new("taskset").args(["-a", "-cp", GEN_CORE, me.as_str()]).stdout(Stdio::null()).status();
        assert!(ok.is_ok_and(|s| s.success()), "taskset of the load generator failed");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut children = Children::default();

    let sim_port = free_port();
    let sim_log = dir.path().join("sim.log");
    let sim_bin = PathBuf::from(env!("CARGO_BIN_EXE_mcas-sim"));
    let sim_args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{sim_port}"),
        "--threads",
        "1",
        "--models",
        "sim-model",
        "--tokens",
        &TOKENS.to_string(),
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sim_pid = children.spawn("mcas-sim", pin, &sim_bin, &sim_args, &sim_log);
    wait_ready(&mut children, "mcas-sim", &sim_log, sim_port, Some(200));

    let gw_port = free_port();
    let admin_port = free_port();
    let gw_conf = gateway_config(dir.path(), gw_port, admin_port, sim_port);
    let gw_log = dir.path().join("gateway.log");
    let gw_bin = PathBuf::from(env!("CARGO_BIN_EXE_mcas-gateway"));
    let gw_args = vec!["--config".to_string(), gw_conf.display().to_string()];
    let gw_pid = children.spawn("mcas-gateway", pin, &gw_bin, &gw_args, &gw_log);
    wait_ready(&mut children, "mcas-gateway", &gw_log, gw_port, Some(200));
    wait_ready(&mut children, "mcas-gateway", &gw_log, admin_port, None);

    let mut targets = vec![
        Target { name: "sim", port: sim_port, pid: sim_pid },
        Target { name: "gateway", port: gw_port, pid: gw_pid },
    ];
    if let Some(nginx_bin) = &nginx {
        let ng_port = free_port();
        let ng_conf = nginx_config(dir.path(), ng_port, sim_port);
        let ng_log = dir.path().join("nginx.log");
        let ng_args =
            vec!["-p".to_string(), dir.path().display().to_string(), "-c".to_string(), ng_conf.display().to_string()];
        let ng_pid = children.spawn("nginx", pin, nginx_bin, &ng_args, &ng_log);
        wait_ready(&mut children, "nginx", &ng_log, ng_port, Some(200));
        targets.push(Target { name: "nginx", port: ng_port, pid: ng_pid });
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for t in &targets {
        rt.block_on(precheck(t));
    }

    // For profiling: MCAS_BENCH_TARGETS=gateway MCAS_BENCH_WORKLOADS=streamed runs only those, without summary.
    let pick = |var: &str, name: &str| std::env::var(var).map_or(true, |v| v.split(',').any(|x| x.trim() == name));
    let filtered = std::env::var("MCAS_BENCH_TARGETS").is_ok() || std::env::var("MCAS_BENCH_WORKLOADS").is_ok();
    let workloads = [Workload::Plain, Workload::Stream, Workload::Ttft];
    let mut results: HashMap<(Workload, &'static str), Vec<RoundResult>> = HashMap::new();
    for w in workloads.into_iter().filter(|w| pick("MCAS_BENCH_WORKLOADS", w.label())) {
        let c = if w == Workload::Ttft { 1 } else { conns };
        for round in 1..=rounds {
            for t in targets.iter().filter(|t| pick("MCAS_BENCH_TARGETS", t.name)) {
                let r = rt.block_on(run_round(t, sim_pid, w, c, dur, tck));
                println!(
                    "round {round}/{rounds} {:<12} {:<8} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  ttft p50 {:>6} ms  \
                     cpu {:>6} µs/req  sim cpu {:>6} µs/req  errors {}",
                    w.label(),
                    t.name,
                    f(r.rps, 0),
                    f(r.p50_ms, 2),
                    f(r.p99_ms, 2),
                    f(r.ttft_p50_ms, 2),
                    f(r.cpu_us, 1),
                    f(r.sim_cpu_us, 1),
                    r.errors
                );
                results.entry((w, t.name)).or_default().push(r);
            }
        }
    }
    println!();
    load("at end");
    if filtered {
        println!("(filtered run: no summary)");
        return;
    }

    let sum: HashMap<(Workload, &str), Summary> = results.iter().map(|(k, v)| (*k, summarize(v))).collect();
    println!("\n## Results (medians of {rounds} rounds of {secs} s)\n");
    println!(
        "| workload | target | conns | req/s | p50 ms | p99 ms | serving CPU µs/req | sim CPU µs/req | requests | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in [Workload::Plain, Workload::Stream] {
        for t in &targets {
            let s = &sum[&(w, t.name)];
            println!(
                "| {} | {} | {conns} | {} | {} | {} | {} | {} | {} | {} |",
                w.label(),
                t.name,
                f(s.rps, 0),
                f(s.p50_ms, 2),
                f(s.p99_ms, 2),
                f(s.cpu_us, 1),
                f(s.sim_cpu_us, 1),
                s.requests,
                s.errors
            );
        }
    }
    println!("\n| TTFT (1 conn, ttft {TTFT_MS} ms, itl {ITL_MS} ms) | TTFT p50 ms | TTFT p99 ms | full p50 ms | req/s | serving CPU µs/req | requests | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for t in &targets {
        let s = &sum[&(Workload::Ttft, t.name)];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            f(s.ttft_p50_ms, 2),
            f(s.ttft_p99_ms, 2),
            f(s.p50_ms, 2),
            f(s.rps, 1),
            f(s.cpu_us, 1),
            s.requests,
            s.errors
        );
    }

    println!("\n## Ratios and added latency\n");
    let has_nginx = targets.iter().any(|t| t.name == "nginx");
    for w in [Workload::Plain, Workload::Stream] {
        let (sim, gw) = (&sum[&(w, "sim")], &sum[&(w, "gateway")]);
        if has_nginx {
            let ng = &sum[&(w, "nginx")];
            println!(
                "{:<12} gateway/nginx throughput {}×, gateway/nginx CPU per request {}× ({} vs {} µs)",
                w.label(),
                f(gw.rps / ng.rps, 2),
                f(gw.cpu_us / ng.cpu_us, 2),
                f(gw.cpu_us, 1),
                f(ng.cpu_us, 1)
            );
            println!(
                "{:<12} p99 added over direct: gateway {} ms, nginx {} ms",
                w.label(),
                f(gw.p99_ms - sim.p99_ms, 2),
                f(ng.p99_ms - sim.p99_ms, 2)
            );
        } else {
            println!("{:<12} p99 added over direct: gateway {} ms", w.label(), f(gw.p99_ms - sim.p99_ms, 2));
        }
    }
    let (sim, gw) = (&sum[&(Workload::Ttft, "sim")], &sum[&(Workload::Ttft, "gateway")]);
    print!(
        "ttft         added over direct (median): gateway {} ms (p99 {} ms)",
        f(gw.ttft_p50_ms - sim.ttft_p50_ms, 3),
        f(gw.ttft_p99_ms - sim.ttft_p99_ms, 3)
    );
    if has_nginx {
        let ng = &sum[&(Workload::Ttft, "nginx")];
        print!(
            ", nginx {} ms (p99 {} ms)",
            f(ng.ttft_p50_ms - sim.ttft_p50_ms, 3),
            f(ng.ttft_p99_ms - sim.ttft_p99_ms, 3)
        );
    }
    println!();
    if sim.ttft_p50_ms < TTFT_MS as f64 * 0.9 {
        println!("WARNING: direct TTFT median is below {TTFT_MS} ms: the sim may ignore x-sim-ttft-ms.");
    }
    drop(children);
    let _ = std::fs::remove_file("/tmp/mcas-bench.pid");
}
