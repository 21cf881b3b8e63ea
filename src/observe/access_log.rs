//! One JSON line per request on stdout (journald under systemd). No key, hash or prompt:
//! the key appears by name, the path without its query string.
//!
//! Lines are handed to a writer thread through a bounded queue and written in batches
//! through a buffer: a request never waits for stdout. When stdout is slow or its pipe is
//! full and the queue fills up, further lines are dropped and counted
//! (`mcas_access_log_dropped_total`) instead of blocking the request path.

use once_cell::sync::Lazy;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub client_ip: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    /// Written as `"ip:port"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Lines queued for the writer thread before new ones are dropped (about 4 MiB of lines at
/// ~400 bytes each: seconds of a stalled stdout at full load).
const QUEUE: usize = 10_000;
/// The writer's buffer: flushed when full and whenever the queue runs empty.
const BUFFER: usize = 64 * 1024;

/// The queue to the writer thread; started with the first line (after Pingora's daemonising
/// fork, which would lose a thread started earlier). `None` if the thread could not start.
static QUEUE_TX: Lazy<Option<SyncSender<Vec<u8>>>> = Lazy::new(|| start(std::io::stdout()));

/// Starts a writer thread draining the queue into `out`.
fn start<W: Write + Send + 'static>(out: W) -> Option<SyncSender<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || drain(rx, out));
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            log::error!("access log disabled: cannot start its writer thread: {e}");
            None
        }
    }
}

fn drain<W: Write>(rx: Receiver<Vec<u8>>, out: W) {
    let mut out = std::io::BufWriter::with_capacity(BUFFER, out);
    loop {
        let line = match rx.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                // Nothing more queued: what is buffered goes out now, then wait.
                let _ = out.flush();
                match rx.recv() {
                    Ok(line) => line,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        };
        let _ = out.write_all(&line);
    }
}

/// Queues the record's line; never blocks. A line that does not fit is dropped and counted.
pub fn write(record: &AccessRecord) {
    let Some(tx) = QUEUE_TX.as_ref() else { return };
    let mut line = Vec::with_capacity(384);
    if serde_json::to_writer(&mut line, record).is_err() {
        return;
    }
    line.push(b'\n');
    send(tx, line);
}

fn send(tx: &SyncSender<Vec<u8>>, line: Vec<u8>) {
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            if let Some(m) = crate::observe::metrics::metrics() {
                m.access_log_dropped.inc();
            }
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};

    /// A stdout that blocks until released, like a full pipe nobody reads.
    #[derive(Clone, Default)]
    struct Stuck(Arc<(Mutex<(bool, Vec<u8>)>, Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut g = cv.wait_while(lock.lock().unwrap(), |(open, _)| !*open).unwrap();
            g.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_a_request_and_drops_are_counted() {
        let out = Stuck::default();
        let tx = start(out.clone()).unwrap();
        let dropped = || crate::observe::metrics::metrics().unwrap().access_log_dropped.get();
        let before = dropped();
        let started = std::time::Instant::now();
        // The writer buffers up to BUFFER bytes, then blocks on the stuck stdout; QUEUE lines
        // wait in the queue; the rest are dropped.
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        let n = QUEUE + 1000;
        for _ in 0..n {
            send(&tx, line.clone());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "a request waited on the log");
        let lost = dropped() - before;
        let taken = (BUFFER / line.len() + 2) as u64;
        assert!((1000 - taken..=1000).contains(&lost), "dropped {lost}");
        // Released: everything that was queued arrives, in order.
        {
            let (lock, cv) = &*out.0;
            lock.lock().unwrap().0 = true;
            cv.notify_all();
        }
        drop(tx);
        let want = (n as u64) - lost;
        for _ in 0..500 {
            let got = out.0 .0.lock().unwrap().1.iter().filter(|&&b| b == b'\n').count() as u64;
            if got == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("queued lines were not written");
    }
}
