//! Debian's `redis-server`, started by a test on a port the harness picks, in a temporary
//! directory, without persistence; and a 3-node Redis Cluster made by `redis-cli --cluster
//! create`. A missing `redis-server` fails the test unless `MCAS_TEST_SKIP_REDIS=1`.

use super::{free_port, spawn, Proc};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Redis {
    /// `None` while stopped.
    pub proc: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// `false` (skip) only when `MCAS_TEST_SKIP_REDIS=1` and there is no `redis-server`.
pub fn available() -> bool {
    let found = std::process::Command::new("redis-server").arg("--version").output().is_ok();
    if !found && std::env::var("MCAS_TEST_SKIP_REDIS").as_deref() == Ok("1") {
        eprintln!("skipped: redis-server is not installed and MCAS_TEST_SKIP_REDIS=1");
        return false;
    }
    assert!(found, "redis-server is missing (apt-get install redis-server; .ci/run installs it)");
    true
}

fn start(port: u16, dir: &std::path::Path, extra: &[String]) -> Proc {
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(["--dir".to_string(), dir.display().to_string()]);
    args.extend(extra.iter().cloned());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proc = spawn("redis-server", &args, &[], addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(addr) {
        assert!(Instant::now() < deadline, "redis-server on {port} did not start:\n{}", proc.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

/// Any reply to an inline PING (`+PONG`, or `-NOAUTH` when a password is required).
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).map(|n| n > 0).unwrap_or(false)
}

impl Redis {
    pub fn start(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let proc = start(port, dir.path(), &extra);
        Redis { proc: Some(proc), port, dir, extra }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as an outage would.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.proc = Some(start(self.port, self.dir.path(), &self.extra));
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]).args(args);
        let out = cmd.output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Three masters, no replicas, slots spread by `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                // The bus port is a free one of its own: by default it is the port + 10,000, which
                // another socket of the machine may hold (seen: "Failed listening on port … (cluster)").
                let bus = free_port().to_string();
                Redis::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { nodes }
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
