//! 10,000 idle connections from one address against `limits.per_ip.connections`.

use super::{connect_from, knob, metric, open_fds, KEY, MEASURING};
use crate::common::gateway::spawn_gateway;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Whether the gateway closed `s` (EOF or reset) rather than leaving it open and idle.
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
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
