//! Issue 10's abuse suite, short versions (the long runs are `benches/abuse.sh`, figures in
//! docs/abuse.md): request smuggling shapes and oversized headers sent over raw TCP against an
//! upstream that records every byte it receives; 10,000 idle connections from one address
//! against `limits.per_ip.connections`; slowloris and slow-body clients (slowhttptest) beside
//! normal ones; a wrong-key flood from 1,000 addresses beside a good key.

use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::spawn_sim;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const KEY: &str = "sk-abuse-0123456789abcdef";

/// Held by the tests that measure latency or throughput, or that burst 10,000 connects, so
/// that they do not measure each other.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A knob `benches/abuse.sh` turns for its longer runs: `MCAS_ABUSE_<name>`, else `default`.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(format!("MCAS_ABUSE_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A raw TCP upstream that records every byte it receives, one entry per connection, and
/// answers `200 ok` once the sender has been quiet for 300 ms.
struct Capture {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Capture {
    async fn start() -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Vec<u8>>>> = Default::default();
        let store = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let store = store.clone();
                let idx = {
                    let mut c = store.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(n)) => store.lock().unwrap()[idx].extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                });
            }
        });
        Capture { addr, conns }
    }

    /// What each connection received since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.conns.lock().unwrap())
    }
}

/// Sends `bytes` on a fresh connection and reads the answer until the gateway closes (or
/// 5 s); returns the status and the whole answer.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn body_json(answer: &str) -> Value {
    answer.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null)
}

async fn capture_gateway(cap: &Capture) -> Gw {
    let rest = format!(
        "keys:\n  - {{ name: k, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: cap, url: \"http://{}/v1\", models: [\"*\"], timeouts: {{ read: 3s }} }}\n\
         routes:\n  - {{ path: \"/raw/*\", provider: cap }}\n  - {{ path: \"/v1/*\", provider: by_model }}\n",
        cap.addr
    );
    spawn_gateway("", &rest, &[]).await
}

/// A request head on `path` with the key and `fields` (each ending in CRLF), then `body`.
fn head(method: &str, path: &str, fields: &str, body: &[u8]) -> Vec<u8> {
    let mut v =
        format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n{fields}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";

/// Every byte an upstream connection received reads as at most one request, and nothing of the
/// smuggled one: a request head, then (if any) chunks that never complete a body.
fn assert_unambiguous(name: &str, conns: &[Vec<u8>]) {
    assert!(conns.len() <= 1, "{name}: {} upstream connections", conns.len());
    for c in conns {
        let text = String::from_utf8_lossy(c);
        assert!(!text.contains("smuggled"), "{name}: the smuggled request reached the upstream:\n{text}");
        assert_eq!(text.matches(" HTTP/1.1\r\n").count(), 1, "{name}: not exactly one request head:\n{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert!(!body.contains("0\r\n\r\n"), "{name}: the upstream got a complete body:\n{text}");
    }
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_nothing_ambiguous_goes_upstream() {
    let cap = Capture::start().await;
    let gw = capture_gateway(&cap).await;
    let chunked_then_smuggled = [b"0\r\n\r\n".as_slice(), SMUGGLED].concat();
    let cl_te = format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", chunked_then_smuggled.len());
    let two_cl = format!("Content-Length: 0\r\nContent-Length: {}\r\n", SMUGGLED.len());
    let mut bare_lf =
        format!("POST /raw/x HTTP/1.1\nHost: gw\nAuthorization: Bearer {KEY}\nContent-Length: 0\n\n").into_bytes();
    bare_lf.extend_from_slice(SMUGGLED);
    // Header-level shapes: refused before any upstream is chosen, on either kind of route.
    let header_shapes: Vec<(&str, Vec<u8>)> = vec![
        ("content-length with transfer-encoding", head("POST", "PATH", &cl_te, &chunked_then_smuggled)),
        ("two content-lengths", head("POST", "PATH", &two_cl, SMUGGLED)),
        ("obs-fold", head("POST", "PATH", "X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", SMUGGLED)),
        ("bare LF", bare_lf),
        ("bare LF inside", head("POST", "PATH", "X-A: a\nContent-Length: 0\r\nX-B: b\r\n", SMUGGLED)),
        (
            "te chunked, identity",
            head("POST", "PATH", "Transfer-Encoding: chunked, identity\r\n", &chunked_then_smuggled),
        ),
        (
            "te identity, chunked",
            head("POST", "PATH", "Transfer-Encoding: identity, chunked\r\n", &chunked_then_smuggled),
        ),
        (
            "two transfer-encodings",
            head(
                "POST",
                "PATH",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
    ];
    for path in ["/raw/x", "/v1/chat/completions"] {
        for (name, bytes) in &header_shapes {
            let bytes = String::from_utf8_lossy(bytes).replace("PATH", path).replace("/raw/x", path);
            let (status, answer) = raw(gw.addr, bytes.as_bytes()).await;
            assert_eq!(status, 400, "{name} on {path}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = cap.take();
            assert!(got.iter().all(Vec::is_empty), "{name} on {path}: the upstream received {got:?}");
        }
    }
    // Invalid chunk sizes: on a route whose body streams (octet-stream), the head may already be
    // upstream when the bad chunk arrives; the upstream must never get a whole request.
    let chunk_shapes = [
        ("non-hex chunk size", "zz"),
        ("overflowing chunk size", "ffffffffffffffffff1"),
        ("negative chunk size", "-1"),
        ("0x chunk size", "0x3"),
        ("chunk longer than its size", "3\r\nabcdef"),
    ];
    for path in ["/raw/x", "/v1/chat/completions"] {
        for (name, size) in chunk_shapes {
            let mut body = format!("{size}\r\nabc\r\n0\r\n\r\n").into_bytes();
            body.extend_from_slice(SMUGGLED);
            let fields = "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n";
            let fields = if path == "/raw/x" { fields } else { "Transfer-Encoding: chunked\r\n" };
            let (status, answer) = raw(gw.addr, &head("POST", path, fields, &body)).await;
            assert_eq!(status, 400, "{name} on {path}: {answer}");
            assert_eq!(body_json(&answer)["error"]["type"], "invalid_request_error", "{name}: {answer}");
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_unambiguous(name, &cap.take());
        }
    }
    // The capture works: a plain request arrives whole, once.
    let (status, answer) = raw(
        gw.addr,
        &head(
            "POST",
            "/raw/x",
            "Content-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: close\r\n",
            b"hello",
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = cap.take();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0]).ends_with("\r\n\r\nhello"), "{got:?}");
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let cap = Capture::start().await;
    let gw = capture_gateway(&cap).await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    for (name, fields) in [("150 header fields", many), ("a 100 KiB header", big)] {
        let (status, answer) = raw(gw.addr, &head("GET", "/raw/x", &fields, b"")).await;
        assert_eq!(status, 431, "{name}: {answer}");
        assert_eq!(body_json(&answer)["error"]["code"], "request_header_fields_too_large", "{name}: {answer}");
    }
    // Under the limits, the same kind of request goes through.
    let few: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, answer) = raw(gw.addr, &head("GET", "/raw/x", &format!("{few}Connection: close\r\n"), b"")).await;
    assert_eq!(status, 200, "{answer}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cap.take().len(), 1, "only the request under the limits reached the upstream");
}

/// Raises this process's soft limit on open files to its hard limit (`prlimit`; no `unsafe`
/// in tests either); returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(1024);
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit could not raise the open-file limit");
    hard
}

async fn metric(gw: &Gw, name: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(to).await
}

/// Whether the gateway closed `s` (EOF or reset) rather than leaving it open and idle.
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// CPU time the process has used so far, user and system (`/proc/<pid>/stat`, in the usual
/// 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn ten_thousand_idle_connections_from_one_address_meet_the_per_ip_cap() {
    let _alone = MEASURING.lock().await;
    const CAP: usize = 50;
    let soft = raise_nofile();
    // 10,000 as asked, unless this machine's hard limit leaves no room for them.
    let n = (knob("CONNS", 10_000) as usize).min(soft.saturating_sub(1_000) as usize);
    assert!(n > 1_000, "the open-file hard limit ({soft}) is too low for this test");
    let rest = format!(
        "keys:\n  - {{ name: k, key: \"{KEY}\", models: [\"*\"] }}\nlimits: {{ per_ip: {{ connections: {CAP} }} }}\n"
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let fds_before = open_fds(gw.proc.pid());
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 10, 1));
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(500);
        let tasks: Vec<_> = (0..batch).map(|_| tokio::spawn(connect_from(attacker, gw.addr))).collect();
        for t in tasks {
            conns.push(t.await.unwrap().expect("connect"));
        }
    }
    let connect_time = started.elapsed();
    // Every connection past the cap is closed at accept and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = (n - CAP) as f64;
    while metric(&gw, "mcas_connections_refused_total").await < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = metric(&gw, "mcas_connections_refused_total").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = conns.iter().filter(|s| !closed(s)).count();
    let fds = open_fds(gw.proc.pid());
    eprintln!(
        "FIGURES idle connections: {n} opened from one address in {connect_time:?}, cap {CAP}: {refused} refused \
         at accept, {open} left open; gateway fds {fds_before} before, {fds} with them"
    );
    assert_eq!(refused, want, "refused connections counted");
    assert_eq!(open, CAP, "connections left open by the gateway");
    assert!(fds <= fds_before + CAP + 10, "the gateway holds {fds} fds (had {fds_before} before)");
    // Another address is not affected, and the admitted connections work.
    let r = reqwest::get(gw.url("/health")).await.unwrap();
    assert_eq!(r.status(), 200);
    let first = conns.iter_mut().find(|s| !closed(s)).unwrap();
    first.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // Closing them gives the places back.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(attacker, gw.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the address was still refused after closing its connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed on drop (slowhttptest).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sim_gateway_rest(sim: &crate::common::Proc, limits: &str) -> String {
    format!(
        "keys:\n  - {{ name: good, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://{}/v1\", models: [\"*\"] }}\n\
         routes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n{limits}",
        sim.addr
    )
}

/// `workers` clients from `from`, each sending chat completions one after another for `run`;
/// the latency of each request that succeeded, and the number that did not.
async fn normal_clients(gw: &Gw, from: IpAddr, workers: usize, run: Duration) -> (Vec<Duration>, usize) {
    let client = reqwest::Client::builder().local_address(from).timeout(Duration::from_secs(10)).build().unwrap();
    let body = serde_json::json!({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]});
    let until = Instant::now() + run;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, body, url) = (client.clone(), body.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0);
                while Instant::now() < until {
                    let t = Instant::now();
                    let ok = match client.post(&url).bearer_auth(KEY).json(&body).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    (all, failed)
}

fn p99(lat: &mut [Duration]) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

/// `n` authenticated uploads from `from` that announce 64 KiB and then send one byte a
/// second: the slow-body client a leaked key allows (slowhttptest cannot send a key, and a
/// body without one is refused at once with 401 before it is read).
fn slow_uploads(gw: &Gw, from: IpAddr, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let Ok(mut s) = connect_from(from, addr).await else { return };
                let head = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n\
                     Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n{{"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn slowloris_and_slow_body_clients_leave_normal_clients_their_latency() {
    let _alone = MEASURING.lock().await;
    let sim = spawn_sim(&["--tokens", "4"]).await;
    let gw = spawn_gateway("", &sim_gateway_rest(&sim, ""), &[]).await;
    // Normal clients come from their own address, as they would in the field.
    let normal = IpAddr::V4(Ipv4Addr::new(127, 0, 20, 1));
    let window = Duration::from_secs(knob("SECS", 4));
    let slow_conns = knob("SLOW_CONNS", 300).to_string();
    let slow_secs = (window.as_secs() * 2 + 10).to_string();
    assert_eq!(normal_clients(&gw, normal, 2, Duration::from_millis(500)).await.1, 0);
    let (mut before, failed) = normal_clients(&gw, normal, 2, window).await;
    assert_eq!(failed, 0);
    let slow = |mode: &str| {
        let url = gw.url("/v1/chat/completions");
        // Niced: slowhttptest spins at ~40% of a core here while the gateway spends ~1% on its
        // 300 connections; in the field the attacker's CPU is not the gateway's.
        let child = std::process::Command::new("nice")
            .args(["-n", "19", "slowhttptest", mode, "-c", &slow_conns, "-r", "150", "-i", "5", "-l", &slow_secs])
            .args(["-x", "16", "-s", "65536", "-p", "3"])
            .args(["-u", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("slowhttptest (Debian package slowhttptest; .ci/run installs it)");
        Killed(child)
    };
    let slowloris = slow("-H");
    let rudy = slow("-B");
    let uploads = slow_uploads(&gw, IpAddr::V4(Ipv4Addr::new(127, 0, 21, 1)), knob("SLOW_CONNS", 300) as usize);
    // Let slowhttptest reach its connections (150 new ones per second).
    tokio::time::sleep(Duration::from_millis(1_000 + knob("SLOW_CONNS", 300) * 1_000 / 150)).await;
    let (mut attacked, failed) = normal_clients(&gw, normal, 2, window).await;
    assert_eq!(failed, 0, "normal requests failed beside the slow clients");
    drop((slowloris, rudy));
    uploads.iter().for_each(|u| u.abort());
    // The undisturbed run is measured on both sides of the attack: other processes on this
    // machine come and go, and that drift must not count as the slow clients' doing.
    let (mut after, failed) = normal_clients(&gw, normal, 2, window).await;
    assert_eq!(failed, 0);
    let base = p99(&mut before).max(p99(&mut after));
    let attacked_p99 = p99(&mut attacked);
    // 2× the undisturbed p99, but never less than 50 ms: on a shared 2-core machine one time
    // slice lost to another process is tens of milliseconds, which would double a p99 of a
    // few milliseconds by itself.
    let limit = (base * 2).max(Duration::from_millis(50));
    eprintln!(
        "FIGURES slow clients: {slow_conns} slowloris + {slow_conns} slow-body (slowhttptest) + {slow_conns} slow uploads; \
         p99 undisturbed {base:?} ({} and {} requests), beside slow clients {attacked_p99:?} ({} requests)",
        before.len(),
        after.len(),
        attacked.len()
    );
    assert!(attacked_p99 <= limit, "p99 {attacked_p99:?} beside slow clients, undisturbed {base:?}");
}

/// Writes one request on `s` and reads its answer; the status and whether the connection may
/// be reused.
async fn exchange(s: &mut TcpStream, req: &[u8]) -> Option<(u16, bool)> {
    s.write_all(req).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_end, len, close) = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, len, head.contains("connection: close"));
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = String::from_utf8_lossy(&buf[9..12]).parse().ok()?;
    Some((status, !close))
}

/// Answers seen by the wrong-key flood: 401, 429, a connection closed without an answer, and
/// anything else.
#[derive(Default)]
struct FloodCounts {
    unauthorized: std::sync::atomic::AtomicU64,
    cooled_off: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU64,
    other: std::sync::atomic::AtomicU64,
}

/// Address `i` of the flood sends a fresh wrong key every `period` until `until`, on one
/// keep-alive connection (a new one when the gateway closes it).
async fn wrong_keys(gw: SocketAddr, i: usize, period: Duration, until: Instant, counts: Arc<FloodCounts>) {
    use std::sync::atomic::Ordering::Relaxed;
    let src = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        if conn.is_none() {
            conn = connect_from(src, gw).await.ok();
        }
        let Some(s) = conn.as_mut() else { continue };
        n += 1;
        let req = format!("GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-wrong-{i}-{n}\r\n\r\n");
        match exchange(s, req.as_bytes()).await {
            Some((status, keep)) => {
                match status {
                    401 => &counts.unauthorized,
                    429 => &counts.cooled_off,
                    _ => &counts.other,
                }
                .fetch_add(1, Relaxed);
                if !keep {
                    conn = None;
                }
            }
            None => {
                counts.closed.fetch_add(1, Relaxed);
                conn = None;
            }
        }
    }
}

/// Runs the flood on a thread of its own at the lowest CPU priority (`renice` on the thread):
/// on a shared 2-core machine the load generator would otherwise take the CPU the gateway and
/// the good client need, and the test would measure the generator.
fn flood(
    gw: SocketAddr,
    addresses: usize,
    per_address: Duration,
    run: Duration,
) -> std::thread::JoinHandle<Arc<FloodCounts>> {
    std::thread::spawn(move || {
        if let Ok(task) = std::fs::read_link("/proc/thread-self") {
            if let Some(tid) = task.file_name().and_then(|t| t.to_str()) {
                let _ = std::process::Command::new("renice").args(["-n", "19", "-p", tid]).output();
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let counts: Arc<FloodCounts> = Default::default();
            let until = Instant::now() + run;
            let tasks: Vec<_> =
                (0..addresses).map(|i| tokio::spawn(wrong_keys(gw, i, per_address, until, counts.clone()))).collect();
            for t in tasks {
                let _ = t.await;
            }
            counts
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_from_a_thousand_addresses_leave_a_good_key_its_throughput() {
    let _alone = MEASURING.lock().await;
    use std::sync::atomic::Ordering::Relaxed;
    const ADDRESSES: usize = 1_000;
    const FAILURES: u64 = 3;
    let sim = spawn_sim(&["--tokens", "4"]).await;
    let limits = format!("limits: {{ per_ip: {{ auth_failures_per_min: {FAILURES} }} }}\n");
    let gw = spawn_gateway("", &sim_gateway_rest(&sim, &limits), &[]).await;
    let good = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let window = Duration::from_secs(knob("SECS", 4));
    let per_address = knob("WRONG_KEY_RATE", 1).max(1);
    assert_eq!(normal_clients(&gw, good, 2, Duration::from_millis(500)).await.1, 0);
    let cpu = cpu_secs(gw.proc.pid());
    let (before, failed) = normal_clients(&gw, good, 2, window).await;
    let cpu_before = cpu_secs(gw.proc.pid()) - cpu;
    assert_eq!(failed, 0);
    // One wrong key a second from each of 1,000 addresses. The 10,000 a second of the issue is
    // `benches/abuse.sh`: a debug build on a shared 2-core machine answers only a few
    // thousand requests a second in all, so that rate would measure the machine.
    // The good key is measured once every address is cooling off, the state a flood stays in:
    // what it costs before that is bounded by `auth_failures_per_min` and asserted below.
    let period = Duration::from_secs(1) / per_address as u32;
    let warmup = period * (FAILURES as u32 + 2);
    let started = Instant::now();
    let flood = flood(gw.addr, ADDRESSES, period, warmup + window + Duration::from_secs(1));
    tokio::time::sleep(warmup).await;
    let cpu = cpu_secs(gw.proc.pid());
    let (during, failed) = normal_clients(&gw, good, 2, window).await;
    let cpu_during = cpu_secs(gw.proc.pid()) - cpu;
    assert_eq!(failed, 0, "the good key was refused during the flood");
    let counts = tokio::task::spawn_blocking(move || flood.join().unwrap()).await.unwrap();
    let flood_time = started.elapsed();
    let (after, failed) = normal_clients(&gw, good, 2, window).await;
    assert_eq!(failed, 0);
    let (c401, c429, closed, other) = (
        counts.unauthorized.load(Relaxed),
        counts.cooled_off.load(Relaxed),
        counts.closed.load(Relaxed),
        counts.other.load(Relaxed),
    );
    let rate = (c401 + c429 + closed + other) as f64 / flood_time.as_secs_f64();
    let at_accept = metric(&gw, "mcas_connections_refused_total{reason=\"cooloff\"}").await;
    let undisturbed = (before.len() + after.len()) as f64 / 2.0;
    eprintln!(
        "FIGURES wrong keys: {} /s offered from {ADDRESSES} addresses, {rate:.0}/s answered ({c401} × 401, {c429} × 429, {closed} closed, {at_accept} of them at accept); good key: {} requests \
         in {window:?} before, {} during, {} after; gateway CPU {cpu_before:.2}s before, {cpu_during:.2}s during",
        per_address * ADDRESSES as u64,
        before.len(),
        during.len(),
        after.len()
    );
    assert_eq!(other, 0, "wrong-key requests got neither 401 nor 429");
    // Each address had `auth_failures_per_min` wrong keys checked against the key table, then
    // one 429 before any key was looked at, on a connection the gateway then closed; from then
    // on its connections were closed at accept, at the cost of an accept.
    assert!(c401 <= ADDRESSES as u64 * FAILURES, "{c401} wrong keys were checked");
    assert!(c429 <= ADDRESSES as u64, "{c429} × 429: cooling-off addresses still got HTTP answers");
    assert!(at_accept >= ADDRESSES as f64, "cooling-off addresses were not refused at accept: {at_accept}");
    assert!(
        during.len() as f64 >= undisturbed / 2.0,
        "good key: {} requests during the flood, {undisturbed} undisturbed",
        during.len()
    );
}

#[test]
fn per_ip_connections_is_checked_with_its_path() {
    let keys = format!("keys:\n  - {{ name: k, key: \"{KEY}\", models: [\"*\"] }}\n");
    let (code, out) =
        crate::common::gateway::check(&format!("{keys}limits: {{ per_ip: {{ connections: 0 }} }}\n"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("limits.per_ip.connections"), "{out}");
    let (code, out) =
        crate::common::gateway::check(&format!("{keys}limits: {{ per_ip: {{ connections: 64 }} }}\n"), &[]);
    assert_eq!(code, 0, "{out}");
}
