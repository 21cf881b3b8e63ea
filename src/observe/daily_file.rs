//! `log.dir`: one log file per UTC day, `mcas-gateway-YYYY-MM-DD.log`. The date is checked on
//! every write, so the first line after midnight opens the next day's file without a restart;
//! opening a new day's file deletes the files older than `log.keep_days`.
//!
//! A write that fails (full disk, directory gone or read-only) loses its lines, counts them in
//! `mcas_log_write_errors_total` and says so once on stderr (the file cannot carry the
//! message); the caller never sees an error, so requests are served as before. When writing
//! works again, stderr is told once more.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "mcas-gateway-";
const SUFFIX: &str = ".log";
const DAY_SECS: u64 = 86_400;
/// After a failed open, how long writes are dropped before the next attempt (an `open` per
/// line against a broken directory would cost more than the line).
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// The wall clock, replaceable by tests that cross midnight.
pub type Clock = Box<dyn Fn() -> SystemTime + Send>;

pub struct DailyFile {
    dir: PathBuf,
    keep_days: Option<u32>,
    clock: Clock,
    /// The UTC day (days since 1970-01-01) of `file`.
    day: u64,
    file: Option<File>,
    /// No open before this time (after a failed one).
    retry_at: Option<SystemTime>,
    /// A failure was reported on stderr and writing has not worked since.
    failing: bool,
}

impl DailyFile {
    pub fn new(dir: PathBuf, keep_days: Option<u32>, clock: Clock) -> Self {
        DailyFile { dir, keep_days, clock, day: 0, file: None, retry_at: None, failing: false }
    }

    /// A writer over a new `DailyFile` on the real clock, shareable between threads (the
    /// access log's writer and the process logger write whole lines under its lock).
    pub fn shared(dir: PathBuf, keep_days: Option<u32>) -> SharedDailyFile {
        SharedDailyFile(Arc::new(Mutex::new(DailyFile::new(dir, keep_days, Box::new(SystemTime::now)))))
    }

    /// The file name of the UTC day `day`.
    pub fn name(day: u64) -> String {
        let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(day * DAY_SECS)).to_string();
        format!("{PREFIX}{}{SUFFIX}", &date[..10])
    }

    /// Writes `buf` whole into today's file; failures are counted, never returned.
    pub fn write_lines(&mut self, buf: &[u8]) {
        let now = (self.clock)();
        let day = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / DAY_SECS).unwrap_or(0);
        if self.file.is_none() || day != self.day {
            if self.retry_at.is_some_and(|t| now < t) && day == self.day {
                self.failed(None);
                return;
            }
            self.file = None;
            self.day = day;
            match self.open(day) {
                Ok(f) => {
                    self.file = Some(f);
                    self.retry_at = None;
                    self.prune(day);
                }
                Err(e) => {
                    self.retry_at = Some(now + REOPEN_EVERY);
                    self.failed(Some(&e));
                    return;
                }
            }
        }
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(buf) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    eprintln!("mcas-gateway: log file {} is written again", self.path(day).display());
                }
            }
            Err(e) => self.failed(Some(&e)),
        }
    }

    fn path(&self, day: u64) -> PathBuf {
        self.dir.join(Self::name(day))
    }

    fn open(&self, day: u64) -> std::io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        OpenOptions::new().create(true).append(true).open(self.path(day))
    }

    fn failed(&mut self, e: Option<&std::io::Error>) {
        if let Some(m) = super::metrics::metrics() {
            m.log_write_errors.inc();
        }
        if !self.failing {
            self.failing = true;
            let why = e.map(|e| e.to_string()).unwrap_or_else(|| "cannot open".into());
            eprintln!(
                "mcas-gateway: cannot write log file {}: {why}; log lines are dropped (counted in \
                 mcas_log_write_errors_total) until it works again",
                self.path(self.day).display()
            );
        }
    }

    /// Deletes this gateway's files of days before the last `keep_days` (today included).
    fn prune(&self, today: u64) {
        let Some(keep) = self.keep_days else { return };
        let Some(oldest_kept) = today.checked_sub(u64::from(keep).saturating_sub(1)) else { return };
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if day_of(&name.to_string_lossy()).is_some_and(|d| d < oldest_kept) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    log::warn!("log.keep_days: cannot delete {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// The UTC day of a file named `mcas-gateway-YYYY-MM-DD.log`; `None` for any other name.
fn day_of(name: &str) -> Option<u64> {
    let date = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if date.len() != 10 {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() / DAY_SECS)
}

/// A [`DailyFile`] behind a lock; as a `Write` it never fails (failures are counted inside).
#[derive(Clone)]
pub struct SharedDailyFile(Arc<Mutex<DailyFile>>);

impl SharedDailyFile {
    pub fn dir(&self) -> PathBuf {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).dir.clone()
    }
}

impl Write for SharedDailyFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write_lines(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `dir` names a directory the gateway could create or write into (for `--check`).
pub fn plausible_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err("exists and is not a directory".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock at `secs` since the epoch, moved by the test.
    fn clock(secs: &Arc<AtomicU64>) -> Clock {
        let s = secs.clone();
        Box::new(move || UNIX_EPOCH + Duration::from_secs(s.load(Ordering::SeqCst)))
    }

    // 2026-12-01T23:59:59Z
    const BEFORE_MIDNIGHT: u64 = 1_796_169_599;

    #[test]
    fn names_carry_the_utc_date_and_parse_back() {
        let day = BEFORE_MIDNIGHT / DAY_SECS;
        assert_eq!(DailyFile::name(day), "mcas-gateway-2026-12-01.log");
        assert_eq!(DailyFile::name(day + 1), "mcas-gateway-2026-12-02.log");
        assert_eq!(day_of("mcas-gateway-2026-12-01.log"), Some(day));
        assert_eq!(day_of("mcas-gateway-2026-12-01.log.gz"), None);
        assert_eq!(day_of("other-2026-12-01.log"), None);
        assert_eq!(day_of("mcas-gateway-2026-13-01.log"), None);
    }

    #[test]
    fn a_write_after_midnight_opens_the_next_days_file() {
        let dir = tempfile::tempdir().unwrap();
        let secs = Arc::new(AtomicU64::new(BEFORE_MIDNIGHT));
        let mut f = DailyFile::new(dir.path().join("logs"), None, clock(&secs));
        f.write_lines(b"one\n");
        secs.store(BEFORE_MIDNIGHT + 1, Ordering::SeqCst);
        f.write_lines(b"two\n");
        f.write_lines(b"three\n");
        let read = |name: &str| std::fs::read_to_string(dir.path().join("logs").join(name)).unwrap();
        assert_eq!(read("mcas-gateway-2026-12-01.log"), "one\n");
        assert_eq!(read("mcas-gateway-2026-12-02.log"), "two\nthree\n");
    }

    #[test]
    fn keep_days_deletes_only_older_files_of_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let today = BEFORE_MIDNIGHT / DAY_SECS;
        for name in [
            DailyFile::name(today - 5),
            DailyFile::name(today - 2),
            DailyFile::name(today - 1),
            "notes.log".to_string(),
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let secs = Arc::new(AtomicU64::new(BEFORE_MIDNIGHT));
        let mut f = DailyFile::new(dir.path().to_path_buf(), Some(2), clock(&secs));
        f.write_lines(b"today\n");
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["mcas-gateway-2026-11-30.log", "mcas-gateway-2026-12-01.log", "notes.log"]);
        // Past midnight, yesterday's file is the oldest kept and the day before goes.
        secs.store(BEFORE_MIDNIGHT + 1, Ordering::SeqCst);
        f.write_lines(b"tomorrow\n");
        assert!(!dir.path().join("mcas-gateway-2026-11-30.log").exists());
        assert!(dir.path().join("mcas-gateway-2026-12-01.log").exists());
    }

    #[test]
    fn a_full_disk_is_counted_and_the_writer_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let secs = Arc::new(AtomicU64::new(BEFORE_MIDNIGHT));
        let today = BEFORE_MIDNIGHT / DAY_SECS;
        // /dev/full: every write fails with ENOSPC, like a full file system.
        std::os::unix::fs::symlink("/dev/full", dir.path().join(DailyFile::name(today))).unwrap();
        let errors = || super::super::metrics::metrics().unwrap().log_write_errors.get();
        let before = errors();
        let mut f = DailyFile::new(dir.path().to_path_buf(), None, clock(&secs));
        f.write_lines(b"lost\n");
        f.write_lines(b"lost too\n");
        assert!(f.failing);
        assert!(errors() >= before + 2);
        // The next day's file is a normal one: writing works again.
        secs.store(BEFORE_MIDNIGHT + 1, Ordering::SeqCst);
        f.write_lines(b"kept\n");
        assert!(!f.failing);
        assert_eq!(std::fs::read_to_string(dir.path().join(DailyFile::name(today + 1))).unwrap(), "kept\n");
    }
}
