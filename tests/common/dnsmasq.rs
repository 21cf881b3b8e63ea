//! Debian's `dnsmasq` as a real DNS server for discovery tests: authoritative for the names
//! in a hosts file the test rewrites (dnsmasq reads it again on SIGHUP) and for the SRV
//! records of a conf file, on a port the harness picks, forwarding nothing.
//!
//! Missing dnsmasq fails the test (`.ci/run` installs it); `MCAS_TEST_SKIP_DNSMASQ=1` skips.

use super::{free_port, spawn, Proc};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    pub proc: Proc,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

/// True (with a message) when the test should be skipped.
pub fn skip() -> bool {
    if std::env::var("MCAS_TEST_SKIP_DNSMASQ").is_ok_and(|v| v == "1") {
        eprintln!("skipped: MCAS_TEST_SKIP_DNSMASQ=1");
        return true;
    }
    false
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file lines) and `conf` (dnsmasq.conf lines, e.g.
    /// `srv-host=…`); returns once it accepts TCP on its port.
    pub fn start(hosts: &str, conf: &str) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| std::path::Path::new(p).exists());
        let bin = bin.unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed: apt-get install -y dnsmasq-base (.ci/run does), or MCAS_TEST_SKIP_DNSMASQ=1"
            )
        });
        let dir = tempfile::tempdir().expect("tempdir");
        // Run as root, dnsmasq drops to `nobody`, who must still read the files on SIGHUP.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let hosts_path = dir.path().join("hosts");
        let conf_path = dir.path().join("dnsmasq.conf");
        std::fs::write(&hosts_path, hosts).expect("write hosts");
        std::fs::write(&conf_path, conf).expect("write conf");
        for f in [&hosts_path, &conf_path] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let args: Vec<String> = [
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--log-facility=-",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("--port={port}"),
                format!("--addn-hosts={}", hosts_path.display()),
                format!("--conf-file={}", conf_path.display()),
            ])
            .collect();
            let mut proc = spawn(bin, &args, &[], addr);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Dnsmasq { proc, hosts: hosts_path, _dir: dir };
                }
                if proc.wait_exit(Duration::from_millis(50)).is_some() {
                    break;
                }
            }
            last = proc.logs();
        }
        panic!("dnsmasq did not start: {last}")
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    /// Rewrites the hosts file and tells dnsmasq to read it again (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        self.signal("HUP");
    }

    /// SIGSTOP: the server stops answering (queries time out) until [`Dnsmasq::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.proc.pid().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // A stopped process would not die of the harness's SIGKILL before being continued on
        // some kernels; continue it first.
        let _ = Command::new("kill").args(["-CONT", &self.proc.pid().to_string()]).status();
    }
}
