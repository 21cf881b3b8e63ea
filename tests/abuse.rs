//! Issue 10's abuse suite, short versions (the long runs are `benches/abuse.sh`, figures in
//! docs/abuse.md): request smuggling shapes and oversized headers sent over raw TCP against an
//! upstream that records every byte it receives; 10,000 idle connections from one address
//! against `limits.per_ip.connections`; slowloris and slow-body clients (slowhttptest) beside
//! normal ones; a wrong-key flood from 1,000 addresses beside a good key.

mod connections;
mod flood;
mod framing;
mod slow;

use crate::common::gateway::Gw;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const KEY: &str = "sk-abuse-0123456789abcdef";

/// Held by the tests that measure latency or throughput, or that burst 10,000 connects, so
/// that they do not measure each other.
pub static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A knob `benches/abuse.sh` turns for its longer runs: `MCAS_ABUSE_<name>`, else `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(format!("MCAS_ABUSE_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends `bytes` on a fresh connection and reads the answer until the gateway closes (or
/// 5 s); returns the status and the whole answer.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before it has read everything (an oversized header):
    // what it answered is still read below.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

pub async fn metric(gw: &Gw, name: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

pub async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(to).await
}

/// CPU time the process has used so far, user and system (`/proc/<pid>/stat`, in the usual
/// 100 ticks a second).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub fn sim_gateway_rest(sim: &crate::common::Proc, limits: &str) -> String {
    format!(
        "keys:\n  - {{ name: good, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://{}/v1\", models: [\"*\"] }}\n\
         routes:\n  - {{ path: \"/v1/*\", provider: by_model }}\n{limits}",
        sim.addr
    )
}

/// `workers` clients from `from`, each sending chat completions one after another for `run`;
/// the latency of each request that succeeded, and the number that did not.
pub async fn normal_clients(gw: &Gw, from: IpAddr, workers: usize, run: Duration) -> (Vec<Duration>, usize) {
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

pub fn p99(lat: &mut [Duration]) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}
