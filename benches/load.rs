//! Load benchmark: `mcas-sim` direct, `mcas-gateway` with every feature on, a bare Pingora proxy built from
//! the patched Pingora in vendor/ and from crates.io Pingora 0.9.1 as published, nginx and HAProxy, all in
//! front of the same `mcas-sim`, in one run with alternated rounds and medians. See docs/benchmarks.md.
//!
//! Run: `cargo bench --bench load`. Environment: `MCAS_BENCH_SECS` (seconds per round, default 5),
//! `MCAS_BENCH_ROUNDS` (default 3), `MCAS_BENCH_CONNS` (connections for the throughput workloads, default 32),
//! `MCAS_BENCH_NGINX`, `MCAS_BENCH_HAPROXY` (binaries; default on PATH, then /usr/sbin),
//! `MCAS_BENCH_BARE` / `MCAS_BENCH_BARE_UNPATCHED` (prebuilt bare-Pingora binaries; default: built by
//! benches/bare-pingora/build.sh), `MCAS_BENCH_GATEWAY_BASE` (an older mcas-gateway binary, run beside this one as
//! `gateway-base` with the same config), `MCAS_BENCH_GATEWAY_FEATURES` (the gateway's optional features kept:
//! comma list of `limits`, `fleet`, `access_log`, or `none`; default all), `MCAS_BENCH_NO_PIN=1` (do not pin with taskset), `MCAS_BENCH_TARGETS` and
//! `MCAS_BENCH_WORKLOADS` (comma lists: run only those), `MCAS_BENCH_SYSCALLS=N` (instead of timed rounds:
//! N requests per target and workload under `strace -c -f`, and the system calls per request),
//! `MCAS_BENCH_CALLGRIND=N[,N,N]` (instead of timed rounds: the proxies run under callgrind, N requests per
//! workload in order — non-streamed, streamed, streamed-256 — are counted, and the instructions per request;
//! dumps in `MCAS_BENCH_CALLGRIND_OUT`, default target/callgrind; see benches/callgrind.sh),
//! `MCAS_BENCH_PACED_RPS` (the request rate of the `paced` workload, default 8000, shared by its connections),
//! `MCAS_BENCH_HOPS=N` (instead of timed rounds: N TTFT requests per proxy under `perf record` of its socket system
//! calls, and the time each proxy spends on the request and on each answer chunk; benches/load/hops.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "load/hops.rs"]
mod hops;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const KEY: &str = "bench-key-0123456789";
const PLAIN_BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}],"model":"sim-model"}"#;
const STREAM_BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}],"model":"sim-model","stream":true}"#;
/// Tokens per completion in the throughput workloads (streamed and not), and in the long streamed one.
const TOKENS: u32 = 16;
const LONG_TOKENS: u32 = 256;
/// The TTFT workload: simulated time to first token and inter-token latency, and tokens per completion
/// (few, so that a round holds more samples; the figure measured is the time to the first token).
const TTFT_MS: u32 = 20;
const ITL_MS: u32 = 5;
const TTFT_TOKENS: u32 = 4;
/// Core of the load generator, and core of the servers (sim and proxy share it).
const GEN_CORE: &str = "0";
const SERVER_CORE: &str = "1";
/// Every target, in the order of the rounds and of the tables.
const TARGETS: [&str; 7] = ["sim", "gateway", "gateway-base", "bare", "bare-0.9.1", "nginx", "haproxy"];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Workload {
    Plain,
    Stream,
    Long,
    /// Non-streamed at a fixed rate every target sustains (`MCAS_BENCH_PACED_RPS`): latency added
    /// by the proxy, not by its throughput limit (at full speed, 32 connections wait for the slowest).
    Paced,
    Ttft,
}

impl Workload {
    const ALL: [Workload; 5] = [Workload::Plain, Workload::Stream, Workload::Long, Workload::Paced, Workload::Ttft];

    fn label(self) -> &'static str {
        match self {
            Workload::Plain => "non-streamed",
            Workload::Stream => "streamed",
            Workload::Long => "streamed-256",
            Workload::Paced => "paced",
            Workload::Ttft => "ttft",
        }
    }

    fn body(self) -> Bytes {
        match self {
            Workload::Plain | Workload::Paced => Bytes::from_static(PLAIN_BODY.as_bytes()),
            _ => Bytes::from_static(STREAM_BODY.as_bytes()),
        }
    }

    fn streamed(self) -> bool {
        !matches!(self, Workload::Plain | Workload::Paced)
    }

    /// Per-request simulator overrides: (tokens, ttft ms, itl ms).
    fn sim(self) -> (u32, u32, u32) {
        match self {
            Workload::Plain | Workload::Stream | Workload::Paced => (TOKENS, 0, 0),
            Workload::Long => (LONG_TOKENS, 0, 0),
            Workload::Ttft => (TTFT_TOKENS, TTFT_MS, ITL_MS),
        }
    }
}

/// Every child process, killed (SIGKILL) and reaped on drop, also when the bench panics.
#[derive(Default)]
struct Children {
    procs: Vec<(String, Child)>,
    /// `MCAS_BENCH_CALLGRIND`: the proxies (not the sim) run under callgrind, writing here.
    callgrind: Option<PathBuf>,
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
        // taskset and valgrind exec the program: the child's pid is the program's.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if pin {
            argv.extend(["taskset".into(), "-c".into(), SERVER_CORE.into()]);
        }
        if let Some(dir) = self.callgrind.as_ref().filter(|_| name != "mcas-sim") {
            // Instrumentation off until a measured round turns it on (`callgrind_around`).
            argv.extend(["valgrind".into(), "--tool=callgrind".into(), "--instr-atstart=no".into()]);
            argv.push(format!("--callgrind-out-file={}/{name}.callgrind", dir.display()).into());
        }
        argv.push(program.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).args(args).stdin(Stdio::null()).stdout(out).stderr(err);
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
    // Under callgrind a start-up takes minutes on a loaded machine.
    let secs = if std::env::var_os("MCAS_BENCH_CALLGRIND").is_some() { 600 } else { 30 };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = http_get_status(port, "/health") {
            if want.is_none_or(|w| w == status) {
                return;
            }
        }
        children.check_alive(name, log);
        if Instant::now() > deadline {
            panic!("{name} not ready on 127.0.0.1:{port} after {secs} s; log {}", log.display());
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

/// A binary from `env` if set, else `name` on PATH, else `/usr/sbin/name`.
fn find_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&dir) {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/sbin").join(name);
    p.is_file().then_some(p)
}

/// The bare-Pingora binary of one variant (`patched` or `unpatched`): from `env` if set, else built by
/// benches/bare-pingora/build.sh (a release build in target/bare-pingora; minutes the first time).
fn bare_binary(env: &str, variant: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bare-pingora/build.sh");
    println!("building the bare Pingora reference ({variant}): {} {variant}", script.display());
    let out = Command::new("bash").arg(&script).arg(variant).stderr(Stdio::inherit()).output().ok()?;
    if !out.status.success() {
        println!("bare Pingora ({variant}) did not build: column skipped");
        return None;
    }
    let path = String::from_utf8_lossy(&out.stdout).lines().last()?.trim().to_string();
    Some(PathBuf::from(path))
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// True if the comma list in `var` names `name`, or `var` is unset.
fn picked(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.split(',').any(|x| x.trim() == name))
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
    /// `paced`: how late each send left against its schedule (the load generator's own delay).
    late_us: Vec<u32>,
    events: u64,
    errors: u64,
    first_error: Option<String>,
}

struct Sample {
    latency_us: u32,
    ttft_us: Option<u32>,
    /// SSE events in the response (`data:` lines), 0 for a non-streamed answer.
    events: u64,
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

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
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
            if workload.streamed() && ttft_us.is_none() && has_content(&buf) {
                ttft_us = Some(t0.elapsed().as_micros() as u32);
            }
        }
    }
    let latency_us = t0.elapsed().as_micros() as u32;
    let ok = status == 200
        && if workload.streamed() {
            contains(&buf[buf.len().saturating_sub(64)..], b"[DONE]")
        } else {
            contains(&buf, b"\"choices\"")
        };
    if !ok {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(400)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    let events = if workload.streamed() { count(&buf, b"data:") } else { 0 };
    Ok(Sample { latency_us, ttft_us, events })
}

/// How long a round lasts: a time, or a number of requests shared by every connection.
#[derive(Clone)]
enum Until {
    Elapsed(Duration),
    Requests(Arc<AtomicI64>),
}

/// One connection: connect, one warm-up request, wait for the start, then request → full response until the
/// round ends. A failed request is counted and the connection reopened.
async fn conn_loop(port: u16, workload: Workload, start: [Arc<Barrier>; 2], until: Until) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut sender = connect(port).await.ok();
    if let Some(s) = sender.as_mut() {
        if one_request(s, port, workload).await.is_err() {
            sender = None;
        }
    }
    for b in start {
        b.wait().await;
    }
    let t0 = Instant::now();
    // `paced`: each connection sends on a schedule (one request per interval, far longer than an
    // answer takes, so no send waits for a late answer); latency counts from the actual send, as
    // tokio's timer wakes up to 1 ms late and that is the client's lateness, not the proxy's.
    let pace = (workload == Workload::Paced).then(|| {
        let rps: f64 = env_num("MCAS_BENCH_PACED_RPS", 8000.0);
        let conns: f64 = env_num("MCAS_BENCH_CONNS", 32.0);
        Duration::from_secs_f64(conns / rps.max(1.0))
    });
    // Connections start spread over one interval, not all at once.
    let mut next = tokio::time::Instant::now() + pace.map_or(Duration::ZERO, |p| p.mul_f64(rand_unit()));
    loop {
        let scheduled = pace.map(|p| {
            let at = next;
            next += p;
            at
        });
        if let Some(at) = scheduled {
            tokio::time::sleep_until(at).await;
            stats.late_us.push(tokio::time::Instant::now().saturating_duration_since(at).as_micros() as u32);
        }
        match &until {
            Until::Elapsed(d) if t0.elapsed() >= *d => break,
            Until::Requests(left) if left.fetch_sub(1, Ordering::Relaxed) <= 0 => break,
            _ => {}
        }
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
                stats.events += sample.events;
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
    /// `paced`: the 99th percentile of how late the load generator sent against the schedule.
    late_p99_ms: f64,
    /// CPU µs per request of the serving process (the sim for `sim`, the proxy otherwise).
    cpu_us: f64,
    /// CPU µs per SSE event of the serving process (streamed workloads).
    cpu_event_us: f64,
    /// CPU µs per request of the sim (the upstream), for every target.
    sim_cpu_us: f64,
    requests: u64,
    /// SSE events received.
    events: u64,
    errors: u64,
}

fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

/// One round: `conns` warm connections until `until`; `around(true)` runs just before the start and
/// `around(false)` just after the end (the syscall mode attaches and detaches strace there).
async fn run_round(
    target: &Target,
    sim_pid: u32,
    workload: Workload,
    conns: usize,
    until: Until,
    tck: u64,
    around: &mut dyn FnMut(bool),
) -> RoundResult {
    // Every connection reaches `warm` after its warm-up request, then waits for `start`.
    let (warm, start) = (Arc::new(Barrier::new(conns + 1)), Arc::new(Barrier::new(conns + 1)));
    let handles: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(conn_loop(target.port, workload, [warm.clone(), start.clone()], until.clone())))
        .collect();
    warm.wait().await;
    around(true);
    start.wait().await;
    let cpu0 = cpu_ticks(target.pid);
    let sim0 = cpu_ticks(sim_pid);
    let t0 = Instant::now();
    let mut all = ConnStats::default();
    for h in handles {
        let s = h.await.unwrap();
        all.latency_us.extend(s.latency_us);
        all.ttft_us.extend(s.ttft_us);
        all.late_us.extend(s.late_us);
        all.events += s.events;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(target.pid);
    let sim1 = cpu_ticks(sim_pid);
    around(false);
    if let Some(e) = &all.first_error {
        eprintln!("  {} {}: {} errors, first: {e}", target.name, workload.label(), all.errors);
    }
    all.latency_us.sort_unstable();
    all.ttft_us.sort_unstable();
    all.late_us.sort_unstable();
    let n = all.latency_us.len() as u64;
    let per = |ticks: u64, n: u64| if n == 0 { f64::NAN } else { ticks as f64 * 1e6 / tck as f64 / n as f64 };
    RoundResult {
        rps: n as f64 / elapsed,
        p50_ms: percentile_ms(&all.latency_us, 0.50),
        p99_ms: percentile_ms(&all.latency_us, 0.99),
        ttft_p50_ms: percentile_ms(&all.ttft_us, 0.50),
        ttft_p99_ms: percentile_ms(&all.ttft_us, 0.99),
        late_p99_ms: percentile_ms(&all.late_us, 0.99),
        cpu_us: per(cpu1 - cpu0, n),
        cpu_event_us: per(cpu1 - cpu0, all.events),
        sim_cpu_us: per(sim1 - sim0, n),
        requests: n,
        events: all.events,
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
    cpu_event_us: f64,
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
        cpu_event_us: med(|r| r.cpu_event_us),
        sim_cpu_us: med(|r| r.sim_cpu_us),
        requests: rounds.iter().map(|r| r.requests).sum(),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Setup

/// The features `MCAS_BENCH_GATEWAY_FEATURES` may leave out (comma list of those kept; default all): `limits`
/// (rpm + tpm + concurrency on the key), `fleet` (ketama over three backends; without it one backend, no
/// balancing policy), `access_log`. Key auth and metrics are always on (the gateway has no mode without them).
const GATEWAY_FEATURES: [&str; 3] = ["limits", "fleet", "access_log"];

/// The kept features, in [`GATEWAY_FEATURES`]' order; an unknown name stops the bench.
fn gateway_features() -> Vec<&'static str> {
    let Ok(list) = std::env::var("MCAS_BENCH_GATEWAY_FEATURES") else { return GATEWAY_FEATURES.to_vec() };
    let asked: Vec<&str> = list.split(',').map(str::trim).filter(|f| !f.is_empty() && *f != "none").collect();
    for f in &asked {
        assert!(
            GATEWAY_FEATURES.contains(f),
            "MCAS_BENCH_GATEWAY_FEATURES: unknown feature {f:?} (known: {GATEWAY_FEATURES:?}, none)"
        );
    }
    GATEWAY_FEATURES.into_iter().filter(|f| asked.contains(f)).collect()
}

/// The gateway with every feature on: key auth, rpm + tpm + concurrency limits on the key (high enough never
/// to refuse), ketama over a fleet of three backends (loopback aliases of the one sim, bound to 0.0.0.0,
/// with health probes), metrics (always on), and the access log (stdout, which the bench sends to a file).
/// `features` ([`gateway_features`]) may leave out the limits, the fleet or the access log.
fn gateway_config(dir: &Path, gw: u16, admin: u16, sim: u16, features: &[&str]) -> PathBuf {
    let path = dir.join("gateway.yaml");
    let limits = if features.contains(&"limits") {
        "\n    limits: { rpm: 1000000000, tpm: 1000000000000, concurrency: 4096 }"
    } else {
        ""
    };
    let fleet = if features.contains(&"fleet") {
        format!("\n    backends: [\"127.0.0.1:{sim}\", \"127.0.0.2:{sim}\", \"127.0.0.3:{sim}\"]\n    balance: ketama")
    } else {
        String::new()
    };
    let access_log = features.contains(&"access_log");
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:{gw}", threads: 1, pid_file: {d}/gateway.pid, upgrade_sock: {d}/gateway.sock }}
admin: {{ listen: "127.0.0.1:{admin}" }}
keys:
  - name: bench
    key: "{KEY}"
    models: ["*"]{limits}
providers:
  - name: vllm
    url: "http://127.0.0.1:{sim}/v1"
    api_key: upstream-provider-key
    models: ["*"]{fleet}
log: {{ access_log: {access_log} }}
"#,
        d = dir.display()
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
            proxy_set_header Authorization "Bearer upstream-provider-key";
        }}
    }}
}}
"#
    );
    std::fs::write(&path, conf).unwrap();
    path
}

/// HAProxy (Debian's): one thread, plain HTTP proxy mode, idle server connections shared by every client
/// connection (`http-reuse always`), `Authorization` replaced like the other proxies do.
fn haproxy_config(dir: &Path, port: u16, sim: u16) -> PathBuf {
    let path = dir.join("haproxy.cfg");
    let conf = format!(
        r#"global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
    # A streaming proxy: each SSE event leaves when it arrives (HAProxy otherwise holds small
    # chunks to merge them, which delays the first token by the whole answer here).
    option http-no-delay
frontend fe
    bind 127.0.0.1:{port}
    default_backend sim
backend sim
    http-request set-header Authorization "Bearer upstream-provider-key"
    server sim 127.0.0.1:{sim}
"#
    );
    std::fs::write(&path, conf).unwrap();
    path
}

fn f(x: f64, prec: usize) -> String {
    if x.is_nan() || x.is_infinite() {
        "-".to_string()
    } else {
        format!("{x:.prec$}")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// System calls per request (`MCAS_BENCH_SYSCALLS=N`)

/// `strace -c -f -p PID` around a round; the counts per system call once it is detached.
struct Strace {
    child: Option<Child>,
    out: PathBuf,
    counts: BTreeMap<String, u64>,
}

impl Strace {
    fn new(out: PathBuf) -> Self {
        Strace { child: None, out, counts: BTreeMap::new() }
    }

    fn around(&mut self, pid: u32, start: bool) {
        if start {
            let _ = std::fs::remove_file(&self.out);
            let child = Command::new("strace")
                .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
                .arg(&self.out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("strace (apt-get install -y strace)");
            self.child = Some(child);
            // strace attaches to every thread before the round starts.
            std::thread::sleep(Duration::from_millis(1000));
        } else if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
            self.counts = parse_strace(&std::fs::read_to_string(&self.out).unwrap_or_default());
        }
    }
}

/// The `calls` column of `strace -c` per system call (the line `total` left out).
fn parse_strace(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let name = fields[fields.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(calls) = fields[3].parse::<u64>() {
            counts.insert(name.to_string(), calls);
        }
    }
    counts
}

fn syscalls_mode(rt: &tokio::runtime::Runtime, targets: &[Target], sim_pid: u32, n: i64, conns: usize, dir: &Path) {
    println!("\n## System calls per request (strace -c -f over {n} requests, {conns} connections)\n");
    println!("| workload | target | system calls per request (calls ÷ requests) | total |");
    println!("|---|---|---|---:|");
    for w in Workload::ALL.into_iter().filter(|w| picked("MCAS_BENCH_WORKLOADS", w.label()) && *w != Workload::Ttft) {
        for t in targets.iter().filter(|t| t.name != "sim") {
            let mut st = Strace::new(dir.join(format!("strace-{}.txt", t.name)));
            let until = Until::Requests(Arc::new(AtomicI64::new(n)));
            let pid = t.pid;
            let r = rt.block_on(run_round(t, sim_pid, w, conns, until, 100, &mut |s| st.around(pid, s)));
            let per = |c: u64| c as f64 / r.requests.max(1) as f64;
            let mut rows: Vec<(&String, &u64)> = st.counts.iter().filter(|(_, c)| per(**c) >= 0.05).collect();
            rows.sort_by(|a, b| b.1.cmp(a.1));
            let list: Vec<String> = rows.iter().map(|(name, c)| format!("{name} {}", f(per(**c), 2))).collect();
            let total: u64 = st.counts.values().sum();
            println!("| {} | {} | {} | {} |", w.label(), t.name, list.join(", "), f(per(total), 2));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Instructions per request (`MCAS_BENCH_CALLGRIND=N[,N,N]`)

/// `callgrind_control` on the proxy around a measured round: counters zeroed and instrumentation on before
/// the start, off and dumped (as `label`) after the end. Returns the dump's path after the end.
fn callgrind_around(pid: u32, start: bool, label: &str, dir: &Path) -> Option<PathBuf> {
    let ctl = |args: &[&str]| {
        let ok = Command::new("callgrind_control")
            .args(args)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "callgrind_control {args:?} {pid} failed");
    };
    if start {
        ctl(&["--zero"]);
        ctl(&["--instr=on"]);
        return None;
    }
    let before: Vec<PathBuf> = callgrind_dumps(dir);
    ctl(&["--instr=off"]);
    ctl(&[&format!("--dump={label}")]);
    // The dump is written by the proxy itself, around when the control returns: wait for its totals.
    for _ in 0..600 {
        if let Some(p) = callgrind_dumps(dir).into_iter().find(|p| !before.contains(p) && callgrind_ir(p).is_some()) {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn callgrind_dumps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.to_string_lossy().contains(".callgrind.")).collect()
        })
        .unwrap_or_default()
}

/// The `Ir` total of a callgrind dump.
fn callgrind_ir(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // `totals:` ends the dump; a `summary:` line at its head may read 0.
    text.lines().rev().find_map(|l| l.strip_prefix("totals:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Per workload and proxy: a warm-up of `n / 4` requests (at most 500), then `n` requests with callgrind's
/// instrumentation on; the instructions (Ir) per request and per SSE event, and each as a multiple of bare's.
/// The dumps stay in `out` (`callgrind_annotate out/gateway.callgrind.N`).
fn callgrind_mode(rt: &tokio::runtime::Runtime, targets: &[Target], counts: &[i64], conns: usize, out: &Path) {
    println!("\n## Instructions per request (callgrind, Ir of the proxy process; {conns} connections)\n");
    println!("| workload | target | requests | Ir/request | Ir/event | ×bare | dump |");
    println!("|---|---|---:|---:|---:|---:|---|");
    let workloads =
        Workload::ALL.into_iter().filter(|w| picked("MCAS_BENCH_WORKLOADS", w.label()) && *w != Workload::Ttft);
    for (i, w) in workloads.enumerate() {
        let n = counts.get(i).or(counts.last()).copied().unwrap_or(1000);
        let mut rows = Vec::new();
        for t in targets.iter().filter(|t| t.name != "sim") {
            let warm = Until::Requests(Arc::new(AtomicI64::new((n / 4).min(500))));
            rt.block_on(run_round(t, t.pid, w, conns, warm, 100, &mut |_| {}));
            let label = format!("{}-{}", t.name, w.label());
            let mut dump = None;
            let until = Until::Requests(Arc::new(AtomicI64::new(n)));
            let r = rt.block_on(run_round(t, t.pid, w, conns, until, 100, &mut |s| {
                dump = callgrind_around(t.pid, s, &label, out).or(dump.take());
            }));
            let ir = dump.as_deref().and_then(callgrind_ir).unwrap_or(0) as f64;
            let events = r.events as f64;
            rows.push((t.name, r.requests, ir / r.requests.max(1) as f64, ir / events.max(1.0), dump));
        }
        let bare = rows.iter().find(|r| r.0 == "bare").map(|r| r.2);
        for (name, requests, per_req, per_event, dump) in rows {
            let ratio = bare.map_or("-".into(), |b| f(per_req / b, 2));
            let per_event = if w.streamed() { f(per_event, 0) } else { "-".into() };
            let dump = dump.map_or("?".into(), |d| d.display().to_string());
            println!("| {} | {name} | {requests} | {} | {per_event} | {ratio} | {dump} |", w.label(), f(per_req, 0));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Main and report

fn main() {
    let secs: f64 = env_num("MCAS_BENCH_SECS", 5.0);
    let rounds: usize = env_num("MCAS_BENCH_ROUNDS", 3usize).max(1);
    let conns: usize = env_num("MCAS_BENCH_CONNS", 32usize).max(1);
    let syscalls: i64 = env_num("MCAS_BENCH_SYSCALLS", 0i64);
    let hop_requests: i64 = env_num("MCAS_BENCH_HOPS", 0i64);
    let callgrind: Vec<i64> = std::env::var("MCAS_BENCH_CALLGRIND")
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
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
    let want = |name: &str| picked("MCAS_BENCH_TARGETS", name);
    let nginx = find_binary("MCAS_BENCH_NGINX", "nginx").filter(|_| want("nginx"));
    let haproxy = find_binary("MCAS_BENCH_HAPROXY", "haproxy").filter(|_| want("haproxy"));
    let bare = if want("bare") { bare_binary("MCAS_BENCH_BARE", "patched") } else { None };
    let bare_unpatched = if want("bare-0.9.1") { bare_binary("MCAS_BENCH_BARE_UNPATCHED", "unpatched") } else { None };
    let version = |p: &Option<PathBuf>, flag: &str| {
        p.as_ref()
            .and_then(|p| command_output(&p.display().to_string(), &[flag]))
            .map(|v| v.lines().next().unwrap_or("").to_string())
    };
    let commit = command_output("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]);
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    let load = |tag: &str| {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average {tag}: {}", l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    };

    println!("# MCAS load benchmark: sim direct, gateway, bare Pingora (patched and 0.9.1), nginx, HAProxy\n");
    println!("hardware: {nproc} CPUs ({cpu_model}), Linux {kernel}");
    println!("gateway commit: {}", commit.as_deref().unwrap_or("?"));
    for (name, path, v) in [
        ("nginx", &nginx, version(&nginx, "-v")),
        ("haproxy", &haproxy, version(&haproxy, "-v")),
        ("bare (patched vendor/ Pingora)", &bare, None),
        ("bare-0.9.1 (crates.io Pingora 0.9.1)", &bare_unpatched, None),
    ] {
        match path {
            Some(p) => println!("{name}: {} {}", p.display(), v.unwrap_or_default()),
            None => println!("{name}: not selected or not installed: skipped"),
        }
    }
    println!(
        "method: per workload, rounds of {secs} s alternate the targets ({rounds} rounds each); figures are \
         medians over rounds. Load generator: hyper 1 HTTP/1.1 client on one tokio thread, keep-alive connections, \
         each looping request → full response; latency = send → last body byte. CPU/req = Δ(utime+stime) of the \
         serving process from /proc/PID/stat (tick = {} µs) over the round ÷ requests completed; CPU/event the \
         same ÷ SSE events received.",
        1_000_000 / tck
    );
    println!(
        "workloads: non-streamed POST /v1/chat/completions ({TOKENS} tokens) at {conns} connections; streamed \
         ({TOKENS} tokens) and streamed-256 ({LONG_TOKENS} tokens), no delays, at {conns} connections; TTFT at 1 \
         connection with x-sim-ttft-ms {TTFT_MS}, x-sim-itl-ms {ITL_MS}, {TTFT_TOKENS} tokens: time from send to \
         the first body chunk with a non-empty \"content\"."
    );
    let features = gateway_features();
    if features.len() == GATEWAY_FEATURES.len() {
        println!(
            "gateway: every feature on (key auth; rpm, tpm and concurrency limits on the key; ketama over 3 backends \
             127.0.0.1-3 reaching the one sim; metrics; access log to a file)."
        );
    } else {
        let off: Vec<&str> = GATEWAY_FEATURES.into_iter().filter(|f| !features.contains(f)).collect();
        println!(
            "gateway: key auth and metrics, with {features:?}, WITHOUT {off:?} (MCAS_BENCH_GATEWAY_FEATURES); not the \
             every-feature configuration of the headline figures."
        );
    }
    if pin {
        println!(
            "pinning: load generator on core {GEN_CORE}; mcas-sim and the proxy under test share core {SERVER_CORE} \
             (for `sim` direct the sim has core {SERVER_CORE} to itself; behind a proxy both compete for it)."
        );
    } else {
        println!("pinning: none (taskset missing, fewer than 2 CPUs, or MCAS_BENCH_NO_PIN set); all share all cores.");
    }
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
    if !callgrind.is_empty() {
        let out = std::env::var_os("MCAS_BENCH_CALLGRIND_OUT")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/callgrind"), PathBuf::from);
        std::fs::create_dir_all(&out).unwrap();
        for old in std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok().map(|e| e.path())) {
            if old.to_string_lossy().contains(".callgrind") {
                let _ = std::fs::remove_file(old);
            }
        }
        children.callgrind = Some(out);
    }

    let sim_port = free_port();
    let sim_log = dir.path().join("sim.log");
    let sim_bin = PathBuf::from(env!("CARGO_BIN_EXE_mcas-sim"));
    // 0.0.0.0: the gateway's fleet reaches it as 127.0.0.1, 127.0.0.2 and 127.0.0.3.
    let sim_args: Vec<String> = [
        "--listen",
        &format!("0.0.0.0:{sim_port}"),
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

    let mut targets = vec![Target { name: "sim", port: sim_port, pid: sim_pid }];
    for name in TARGETS.into_iter().filter(|n| *n != "sim" && want(n)) {
        let port = free_port();
        let log = dir.path().join(format!("{name}.log"));
        let upstream = format!("127.0.0.1:{sim_port}");
        let (program, args): (PathBuf, Vec<String>) = match name {
            "gateway" | "gateway-base" => {
                // gateway-base: an older build of the gateway (MCAS_BENCH_GATEWAY_BASE), run with the same
                // config beside this one, so a change is measured old against new in one run.
                let program = match name {
                    "gateway" => PathBuf::from(env!("CARGO_BIN_EXE_mcas-gateway")),
                    _ => match std::env::var_os("MCAS_BENCH_GATEWAY_BASE") {
                        Some(p) => PathBuf::from(p),
                        None => continue,
                    },
                };
                let admin = free_port();
                let own = dir.path().join(name);
                std::fs::create_dir_all(&own).unwrap();
                let conf = gateway_config(&own, port, admin, sim_port, &features);
                let pid = children.spawn(name, pin, &program, &["--config".into(), conf.display().to_string()], &log);
                wait_ready(&mut children, name, &log, port, Some(200));
                wait_ready(&mut children, name, &log, admin, None);
                targets.push(Target { name, port, pid });
                continue;
            }
            "bare" | "bare-0.9.1" => {
                let bin = if name == "bare" { &bare } else { &bare_unpatched };
                let Some(bin) = bin else { continue };
                (bin.clone(), vec![format!("127.0.0.1:{port}"), upstream])
            }
            "nginx" => {
                let Some(bin) = &nginx else { continue };
                let conf = nginx_config(dir.path(), port, sim_port);
                (
                    bin.clone(),
                    vec!["-p".into(), dir.path().display().to_string(), "-c".into(), conf.display().to_string()],
                )
            }
            "haproxy" => {
                let Some(bin) = &haproxy else { continue };
                let conf = haproxy_config(dir.path(), port, sim_port);
                (bin.clone(), vec!["-db".into(), "-f".into(), conf.display().to_string()])
            }
            _ => unreachable!(),
        };
        let pid = children.spawn(name, pin, &program, &args, &log);
        wait_ready(&mut children, name, &log, port, Some(200));
        targets.push(Target { name, port, pid });
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for t in &targets {
        rt.block_on(precheck(t));
    }

    if hop_requests > 0 {
        hops::hops_mode(&rt, &targets, hop_requests, dir.path());
        load("at end");
        return;
    }
    if syscalls > 0 {
        syscalls_mode(&rt, &targets, sim_pid, syscalls, conns, dir.path());
        load("at end");
        return;
    }
    if let Some(out) = children.callgrind.clone() {
        callgrind_mode(&rt, &targets, &callgrind, conns, &out);
        load("at end");
        return;
    }

    let targets: Vec<Target> = targets.into_iter().filter(|t| want(t.name)).collect();
    let workloads: Vec<Workload> =
        Workload::ALL.into_iter().filter(|w| picked("MCAS_BENCH_WORKLOADS", w.label())).collect();
    let mut results: HashMap<(Workload, &'static str), Vec<RoundResult>> = HashMap::new();
    for &w in &workloads {
        let c = if w == Workload::Ttft { 1 } else { conns };
        for round in 1..=rounds {
            for t in &targets {
                let r = rt.block_on(run_round(t, sim_pid, w, c, Until::Elapsed(dur), tck, &mut |_| {}));
                println!(
                    "round {round}/{rounds} {:<12} {:<10} {:>9} req/s  p50 {:>7} ms  p99 {:>7} ms  ttft p50 {:>6} ms  \
                     cpu {:>6} µs/req  sim cpu {:>6} µs/req  errors {}{}",
                    w.label(),
                    t.name,
                    f(r.rps, 0),
                    f(r.p50_ms, 2),
                    f(r.p99_ms, 2),
                    f(r.ttft_p50_ms, 2),
                    f(r.cpu_us, 1),
                    f(r.sim_cpu_us, 1),
                    r.errors,
                    if w == Workload::Paced {
                        format!("  sends late p99 {} ms", f(r.late_p99_ms, 2))
                    } else {
                        String::new()
                    }
                );
                results.entry((w, t.name)).or_default().push(r);
            }
        }
    }
    println!();
    load("at end");
    report(&targets, &workloads, &results, rounds, secs, conns);
    drop(children);
}

fn report(
    targets: &[Target],
    workloads: &[Workload],
    results: &HashMap<(Workload, &'static str), Vec<RoundResult>>,
    rounds: usize,
    secs: f64,
    conns: usize,
) {
    let sum: HashMap<(Workload, &str), Summary> = results.iter().map(|(k, v)| (*k, summarize(v))).collect();
    let ratio = |w: Workload, t: &str, base: &str| match (sum.get(&(w, t)), sum.get(&(w, base))) {
        (Some(a), Some(b)) => f(a.cpu_us / b.cpu_us, 2),
        _ => "-".to_string(),
    };
    println!("\n## Results (medians of {rounds} rounds of {secs} s)\n");
    println!(
        "| workload | target | conns | req/s | p50 ms | p99 ms | CPU µs/req | CPU µs/event | CPU ×nginx | CPU ×bare | \
         sim CPU µs/req | requests | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &w in workloads.iter().filter(|w| **w != Workload::Ttft) {
        for t in targets {
            let Some(s) = sum.get(&(w, t.name)) else { continue };
            println!(
                "| {} | {} | {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.label(),
                t.name,
                f(s.rps, 0),
                f(s.p50_ms, 2),
                f(s.p99_ms, 2),
                f(s.cpu_us, 1),
                f(s.cpu_event_us, 2),
                ratio(w, t.name, "nginx"),
                ratio(w, t.name, "bare"),
                f(s.sim_cpu_us, 1),
                s.requests,
                s.errors
            );
        }
    }
    if workloads.contains(&Workload::Ttft) {
        println!(
            "\n| TTFT (1 conn, ttft {TTFT_MS} ms, itl {ITL_MS} ms, {TTFT_TOKENS} tokens) | TTFT p50 ms | TTFT p99 ms | \
             TTFT added ms (p50) | full p50 ms | req/s | CPU µs/req | requests | errors |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let sim = sum.get(&(Workload::Ttft, "sim"));
        for t in targets {
            let Some(s) = sum.get(&(Workload::Ttft, t.name)) else { continue };
            let added = sim.map_or(f64::NAN, |d| s.ttft_p50_ms - d.ttft_p50_ms);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.name,
                f(s.ttft_p50_ms, 2),
                f(s.ttft_p99_ms, 2),
                f(added, 3),
                f(s.p50_ms, 2),
                f(s.rps, 1),
                f(s.cpu_us, 1),
                s.requests,
                s.errors
            );
        }
        if sim.is_some_and(|d| d.ttft_p50_ms < TTFT_MS as f64 * 0.9) {
            println!("WARNING: direct TTFT median is below {TTFT_MS} ms: the sim may ignore x-sim-ttft-ms.");
        }
    }
    println!("\n## p99 added over direct (ms), and the headline ratios\n");
    for &w in workloads.iter().filter(|w| **w != Workload::Ttft) {
        let Some(sim) = sum.get(&(w, "sim")) else { continue };
        let added: Vec<String> = targets
            .iter()
            .filter(|t| t.name != "sim")
            .filter_map(|t| sum.get(&(w, t.name)).map(|s| format!("{} {}", t.name, f(s.p99_ms - sim.p99_ms, 2))))
            .collect();
        println!("{:<13} p99 added: {}", w.label(), added.join(", "));
    }
    for &w in workloads.iter().filter(|w| **w != Workload::Ttft) {
        println!(
            "{:<13} CPU/req: gateway ÷ bare {}×, bare ÷ bare-0.9.1 {}×, gateway ÷ nginx {}×, gateway ÷ haproxy {}×, \
             bare ÷ nginx {}×",
            w.label(),
            ratio(w, "gateway", "bare"),
            ratio(w, "bare", "bare-0.9.1"),
            ratio(w, "gateway", "nginx"),
            ratio(w, "gateway", "haproxy"),
            ratio(w, "bare", "nginx"),
        );
    }
}

/// A number in [0, 1), different on each call (std's per-instance random hash keys).
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (h >> 11) as f64 / (1u64 << 53) as f64
}
