//! `MCAS_BENCH_HOPS=N`: where a proxy's share of the time to first token goes, from its own system calls.
//!
//! N requests of the `ttft` workload (1 connection) go through each proxy while `perf record` takes the
//! syscall tracepoints of `epoll_wait`, `recvfrom`, `sendto` and `writev` of the serving process (kernel
//! timestamps, no ptrace stop: unlike strace it barely slows the proxy down). From the thread that reads the
//! sockets two hops are timed, medians over the requests:
//! - the request hop: the client's request read (its `recvfrom` returns) → the request written upstream
//!   (the next write returns);
//! - the chunk hop, for every answer chunk that arrives after the proxy slept (an `epoll_wait` that blocked
//!   more than 2 ms: the sim's time to first token and inter-token gaps): `epoll_wait` returns → the chunk is
//!   read → it is written to the client; split into wake → read and read → write.
//!
//! Time to first token added ≈ request hop + first chunk hop + the proxy's wake-ups, so a difference between
//! proxies in the load benchmark's TTFT row shows here as user-space time on one of the hops (docs/benchmarks.md,
//! "Latency added by the proxy").

use super::{f, run_round, Target, Until, Workload};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

const EVENTS: &str = "syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_recvfrom,\
syscalls:sys_exit_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_exit_sendto,syscalls:sys_enter_writev,\
syscalls:sys_exit_writev";
/// An `epoll_wait` that blocked longer than this waited for the sim (TTFT 20 ms, ITL 5 ms), not for the CPU.
const IDLE_US: f64 = 2000.0;

/// One system call of the traced thread: name, fd (for reads and writes), enter and exit time (µs), result.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    name: String,
    fd: i64,
    enter: f64,
    exit: f64,
    ret: i64,
}

/// The hops of one traced run, in µs.
#[derive(Debug, Default)]
struct Hops {
    request: Vec<f64>,
    /// (wake → read, read → write, wake → write) per chunk that arrived after an idle wait.
    chunk: Vec<(f64, f64, f64)>,
}

fn hex(s: &str) -> Option<i64> {
    u64::from_str_radix(s.trim_end_matches(',').trim_start_matches("0x"), 16).ok().map(|v| v as i64)
}

/// `perf script` lines (`COMM TID [CPU] SECS: syscalls:sys_enter_NAME: fd: 0x…, …` or `…sys_exit_NAME: 0x…`)
/// → the calls of the thread that made the most `recvfrom`s, in order.
fn parse(text: &str) -> Vec<Call> {
    let mut events: Vec<(u32, f64, bool, String, i64)> = Vec::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = tokens.iter().position(|t| t.starts_with("syscalls:sys_")) else { continue };
        if i < 3 {
            continue;
        }
        let (Ok(tid), Ok(secs)) = (tokens[i - 3].parse::<u32>(), tokens[i - 1].trim_end_matches(':').parse::<f64>())
        else {
            continue;
        };
        let ev = tokens[i].trim_start_matches("syscalls:sys_").trim_end_matches(':');
        let (enter, name) = match (ev.strip_prefix("enter_"), ev.strip_prefix("exit_")) {
            (Some(n), _) => (true, n),
            (_, Some(n)) => (false, n),
            _ => continue,
        };
        let value = if enter {
            tokens.iter().position(|t| *t == "fd:").and_then(|j| tokens.get(j + 1)).and_then(|v| hex(v)).unwrap_or(-1)
        } else {
            tokens.get(i + 1).and_then(|v| hex(v)).unwrap_or(-1)
        };
        events.push((tid, secs * 1e6, enter, name.to_string(), value));
    }
    let mut reads: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.2 && e.3 == "recvfrom") {
        *reads.entry(e.0).or_default() += 1;
    }
    let Some(tid) = reads.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t) else { return Vec::new() };
    let mut calls = Vec::new();
    let mut open: Option<(String, i64, f64)> = None;
    for (_, t, enter, name, value) in events.into_iter().filter(|e| e.0 == tid) {
        if enter {
            open = Some((name, value, t));
        } else if let Some((n, fd, start)) = open.take().filter(|o| o.0 == name) {
            calls.push(Call { name: n, fd, enter: start, exit: t, ret: value });
        }
    }
    calls
}

fn hops(calls: &[Call]) -> Hops {
    let writes = |c: &&Call| c.name == "sendto" || c.name == "writev";
    // The client's connection is the one written to most (every chunk goes there).
    let mut written: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for c in calls.iter().filter(writes) {
        *written.entry(c.fd).or_default() += 1;
    }
    let Some(client) = written.into_iter().max_by_key(|(_, n)| *n).map(|(fd, _)| fd) else {
        return Hops::default();
    };
    let mut out = Hops::default();
    for (i, read) in calls.iter().enumerate() {
        if read.name != "recvfrom" || read.ret <= 0 {
            continue;
        }
        let Some(write) = calls[i + 1..].iter().take_while(|c| c.name != "recvfrom").find(writes) else { continue };
        if read.fd == client && write.fd != client {
            out.request.push(write.exit - read.exit);
        } else if read.fd != client && write.fd == client {
            let Some(wait) = i.checked_sub(1).map(|j| &calls[j]) else { continue };
            if wait.name == "epoll_wait" && wait.exit - wait.enter > IDLE_US {
                out.chunk.push((read.enter - wait.exit, write.enter - read.exit, write.exit - wait.exit));
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn perf_record(pid: u32, data: &Path) -> Child {
    let child = Command::new("perf")
        .args(["record", "-m", "1024", "-e", EVENTS, "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (apt-get install -y linux-perf)");
    // perf attaches to every thread before the round starts.
    std::thread::sleep(Duration::from_millis(1000));
    child
}

fn perf_script(mut child: Child, data: &Path) -> String {
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let _ = child.wait();
    let out = Command::new("perf").arg("script").arg("-i").arg(data).stderr(Stdio::null()).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

pub(crate) fn hops_mode(rt: &tokio::runtime::Runtime, targets: &[Target], n: i64, dir: &Path) {
    println!(
        "\n## The proxy's hops on the first-token path ({n} TTFT requests, 1 connection; perf syscall tracepoints)\n"
    );
    println!("| target | requests | request hop µs (p50) | chunk hop µs (p50) | wake → read | read → write | chunks |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for t in targets.iter().filter(|t| t.name != "sim") {
        let data = dir.join(format!("hops-{}.data", t.name));
        let mut rec = None;
        let mut text = String::new();
        let until = Until::Requests(Arc::new(AtomicI64::new(n)));
        let r = rt.block_on(run_round(t, t.pid, Workload::Ttft, 1, until, 100, &mut |start| {
            if start {
                rec = Some(perf_record(t.pid, &data));
            } else if let Some(child) = rec.take() {
                text = perf_script(child, &data);
            }
        }));
        let _ = std::fs::remove_file(&data);
        let h = hops(&parse(&text));
        let part = |k: usize| median(h.chunk.iter().map(|c| [c.0, c.1, c.2][k]).collect());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            r.requests,
            f(median(h.request.clone()), 1),
            f(part(2), 1),
            f(part(0), 1),
            f(part(1), 1),
            h.chunk.len()
        );
    }
}
