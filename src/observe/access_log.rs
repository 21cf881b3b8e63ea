//! One JSON line per request on stdout (journald under systemd), or in the day's file of
//! `log.dir` (src/observe/daily_file.rs). No key, hash or prompt: the key appears by name, the
//! path without its query string.
//!
//! Lines are appended to a bounded in-memory buffer that a writer thread writes out in
//! batches: a request never waits for stdout. When stdout is slow or its pipe is full and the
//! buffer fills up, further lines are dropped and counted (`mcas_access_log_dropped_total`)
//! instead of blocking the request path.

use super::daily_file::SharedDailyFile;
use once_cell::sync::{Lazy, OnceCell};
use serde::Serialize;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub ts: Timestamp,
    pub request_id: &'a str,
    pub client_ip: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: Millis,
    /// Upstream time to response header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<Millis>,
    /// Time to the first event of a streamed answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<Millis>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    /// `"ip:port"` (the backend's `addr_text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// The error code of the gateway's own refusal (`rate_limit_requests`, `invalid_api_key`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'a str>,
}

/// Bytes of lines waiting for the writer before new lines are dropped (seconds of a stalled
/// stdout at full load).
const MAX_PENDING: usize = 4 << 20;
/// How often the writer takes what has accumulated.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Lines waiting for the writer thread. Requests append under the lock (a copy, never I/O);
/// the writer swaps the buffer out every [`FLUSH_EVERY`] and writes it with the lock released,
/// so one wake-up and one `write` carry many lines instead of one each.
struct Pending {
    buf: Mutex<Vec<u8>>,
}

/// `log.dir`'s files, when set before the first line; stdout otherwise.
static FILES: OnceCell<SharedDailyFile> = OnceCell::new();

/// Sends the access log into `files` instead of stdout. Call before the first line is written;
/// a later call changes nothing.
pub fn to_files(files: SharedDailyFile) {
    let _ = FILES.set(files);
}

/// Where lines go: the day's file of `log.dir`, or stdout.
fn destination() -> Box<dyn Write + Send> {
    match FILES.get() {
        Some(f) => Box::new(f.clone()),
        None => Box::new(std::io::stdout()),
    }
}

/// Started with the first line (after Pingora's daemonising fork, which would lose a thread
/// started earlier). `None` if the thread could not start.
static PENDING: Lazy<Option<Arc<Pending>>> = Lazy::new(|| start(destination()));

/// Starts a writer thread draining the pending lines into `out`.
fn start<W: Write + Send + 'static>(out: W) -> Option<Arc<Pending>> {
    let pending = Arc::new(Pending { buf: Mutex::new(Vec::with_capacity(64 * 1024)) });
    let shared = pending.clone();
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || drain(&shared, out));
    match spawned {
        Ok(_) => Some(pending),
        Err(e) => {
            log::error!("access log disabled: cannot start its writer thread: {e}");
            None
        }
    }
}

fn drain<W: Write>(pending: &Pending, mut out: W) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        {
            let mut buf = pending.buf.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *buf, &mut batch);
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
        }
    }
}

/// Writes out the lines queued so far, on the caller's thread (at exit, after the last
/// request was logged).
pub fn flush() {
    if let Some(p) = PENDING.as_ref() {
        let batch = std::mem::take(&mut *p.buf.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = destination();
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

/// Queues the record's line; never waits for stdout. A line that does not fit is dropped
/// and counted.
pub fn write(record: &AccessRecord) {
    if let Some(p) = PENDING.as_ref() {
        append(p, |buf| {
            record.write_json(buf);
            true
        });
    }
}

impl AccessRecord<'_> {
    /// The line `serde_json::to_writer` writes for the record (same fields, order, skips and
    /// escapes; the test below compares both), without serde's per-field machinery, which was a
    /// measurable part of the gateway's work per request (docs/benchmarks.md).
    fn write_json(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(b"{\"ts\":");
        json_bytes(b, self.ts.as_bytes());
        b.extend_from_slice(b",\"request_id\":");
        json_str(b, self.request_id);
        b.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => json_str(b, ip),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"method\":");
        json_str(b, self.method);
        b.extend_from_slice(b",\"path\":");
        json_str(b, self.path);
        b.extend_from_slice(b",\"status\":");
        b.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        b.extend_from_slice(b",\"duration_ms\":");
        self.duration_ms.write_json(b);
        if let Some(v) = self.ttfb_ms {
            b.extend_from_slice(b",\"ttfb_ms\":");
            v.write_json(b);
        }
        if let Some(v) = self.ttft_ms {
            b.extend_from_slice(b",\"ttft_ms\":");
            v.write_json(b);
        }
        b.extend_from_slice(b",\"bytes_in\":");
        b.extend_from_slice(itoa::Buffer::new().format(self.bytes_in).as_bytes());
        b.extend_from_slice(b",\"bytes_out\":");
        b.extend_from_slice(itoa::Buffer::new().format(self.bytes_out).as_bytes());
        opt_str(b, b",\"key\":", self.key);
        opt_str(b, b",\"route\":", self.route);
        opt_str(b, b",\"provider\":", self.provider);
        if let Some(addr) = self.backend {
            b.extend_from_slice(b",\"backend\":\"");
            // An address has nothing to escape (a test checks the backends' texts).
            b.extend_from_slice(addr.as_bytes());
            b.push(b'"');
        }
        if let Some(v) = self.model {
            b.extend_from_slice(b",\"model\":");
            json_str(b, v);
        }
        b.extend_from_slice(if self.stream { b",\"stream\":true" } else { b",\"stream\":false" });
        opt_u64(b, b",\"prompt_tokens\":", self.prompt_tokens);
        opt_u64(b, b",\"completion_tokens\":", self.completion_tokens);
        opt_str(b, b",\"error\":", self.error);
        opt_str(b, b",\"refusal\":", self.refusal);
        b.push(b'}');
    }
}

/// The member `name` (its comma, key and colon) with the string `v`, when there is one.
/// Written out field by field: a loop over an array of them costs its set-up on every line.
#[inline(always)]
fn opt_str(b: &mut Vec<u8>, name: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        b.extend_from_slice(name);
        json_str(b, v);
    }
}

/// [`opt_str`] of a number.
#[inline(always)]
fn opt_u64(b: &mut Vec<u8>, name: &[u8], v: Option<u64>) {
    if let Some(v) = v {
        b.extend_from_slice(name);
        b.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
}

/// A JSON string as serde_json writes it: quote and backslash escaped, control characters as
/// short (`\\n`) or `\\u00XX` escapes, everything else (UTF-8 included) as is. A string with
/// nothing to escape (every field of a usual line) is checked eight bytes at a time and copied
/// at once.
#[inline(always)]
fn json_str(b: &mut Vec<u8>, s: &str) {
    json_bytes(b, s.as_bytes());
}

/// [`json_str`] of a text's bytes (UTF-8, or ASCII as a [`Timestamp`]'s).
#[inline(always)]
fn json_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.push(b'"');
    if plain(bytes) {
        b.extend_from_slice(bytes);
    } else {
        escape_into(b, bytes);
    }
    b.push(b'"');
}

/// Whether no byte of `bytes` needs an escape.
#[inline(always)]
fn plain(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        if let Ok(w) = <[u8; 8]>::try_from(w) {
            if needs_escape(u64::from_le_bytes(w)) {
                return false;
            }
        }
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return true;
    }
    // The last eight bytes (some checked already) when there are that many.
    match bytes.len().checked_sub(8).and_then(|at| <[u8; 8]>::try_from(&bytes[at..]).ok()) {
        Some(last) => !needs_escape(u64::from_le_bytes(last)),
        None => rest.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\'),
    }
}

/// The bytes of a string that has something to escape, escaped.
#[cold]
#[inline(never)]
fn escape_into(b: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    let mut unicode = *b"\\u0000";
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                unicode[4] = HEX[usize::from(c >> 4)];
                unicode[5] = HEX[usize::from(c & 0xf)];
                &unicode
            }
            _ => continue,
        };
        b.extend_from_slice(&bytes[start..i]);
        b.extend_from_slice(esc);
        start = i + 1;
    }
    b.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes of `w` must be escaped in a JSON string: a control
/// character (below 0x20), `"` or `\`. Each test is exact for the word as a whole (the
/// classic "has a byte less than n" bit trick, n <= 128; equality as "less than 1" after xor).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let less = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    (less(w, 0x20) | less(w ^ (ONES * 0x22), 1) | less(w ^ (ONES * 0x5c), 1)) != 0
}

/// A duration in milliseconds with microsecond precision, as the line carries it (`12.345`).
/// The line holds the number serde_json writes for the float `micros / 1000` (its shortest
/// form, which for these values is the decimal with at most three fraction digits), written
/// with integer formatting instead of the float's (a measurable part of the line's cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis {
    micros: u64,
}

impl Millis {
    /// Below this (35 years), floats are finer than a microsecond, so no shorter decimal than
    /// the one with three fraction digits reads back as `micros / 1000`; at or above it the
    /// float's own formatting is used.
    const EXACT: u64 = 1 << 50;

    pub fn of(d: std::time::Duration) -> Millis {
        Millis { micros: u64::try_from(d.as_micros()).unwrap_or(u64::MAX) }
    }

    #[cfg(test)]
    pub fn from_micros(micros: u64) -> Millis {
        Millis { micros }
    }

    fn as_f64(self) -> f64 {
        self.micros as f64 / 1000.0
    }

    /// Writes the number: whole milliseconds, a point, the microseconds without trailing
    /// zeros (at least one digit).
    fn write_json(self, b: &mut Vec<u8>) {
        if self.micros >= Self::EXACT {
            if serde_json::to_writer(&mut *b, &self.as_f64()).is_err() {
                b.extend_from_slice(b"null");
            }
            return;
        }
        let frac = (self.micros % 1000) as u16;
        b.extend_from_slice(itoa::Buffer::new().format(self.micros / 1000).as_bytes());
        let digits = [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
        let n = if frac.is_multiple_of(100) {
            2
        } else if frac.is_multiple_of(10) {
            3
        } else {
            4
        };
        b.extend_from_slice(&digits[..n]);
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

fn append(p: &Pending, line: impl FnOnce(&mut Vec<u8>) -> bool) {
    let mut buf = p.buf.lock().unwrap_or_else(|p| p.into_inner());
    if buf.len() >= MAX_PENDING {
        drop(buf);
        if let Some(m) = crate::observe::metrics::metrics() {
            m.access_log_dropped.inc();
        }
        return;
    }
    let at = buf.len();
    if line(&mut buf) {
        buf.push(b'\n');
    } else {
        buf.truncate(at);
    }
}

pub fn now_rfc3339() -> Timestamp {
    rfc3339_millis(std::time::SystemTime::now())
}

/// A time as `humantime::format_rfc3339_millis` writes it (`2026-12-01T16:41:41.123Z`), held
/// without an allocation when it is that short (always, for the years 1970 to 9999).
#[derive(Clone)]
pub struct Timestamp(Stamp);

#[derive(Clone)]
enum Stamp {
    Inline { len: u8, buf: [u8; Timestamp::INLINE] },
    Owned(String),
}

impl Timestamp {
    const INLINE: usize = 32;

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The text's bytes, without [`Self::as_str`]'s UTF-8 check (the access log line copies them).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Stamp::Inline { len, buf } => &buf[..usize::from(*len)],
            Stamp::Owned(s) => s.as_bytes(),
        }
    }

    /// `date_time` (ASCII), then `.`, the milliseconds' three digits and `Z`.
    fn with_millis(date_time: &str, millis: u32) -> Self {
        let digits = [millis / 100 % 10, millis / 10 % 10, millis % 10].map(|d| b'0' + d as u8);
        let len = date_time.len() + 5;
        if len > Self::INLINE {
            let mut s = String::with_capacity(len);
            s.push_str(date_time);
            s.push('.');
            s.extend(digits.map(char::from));
            s.push('Z');
            return Timestamp(Stamp::Owned(s));
        }
        let mut buf = [0u8; Self::INLINE];
        buf[..date_time.len()].copy_from_slice(date_time.as_bytes());
        buf[date_time.len()] = b'.';
        buf[date_time.len() + 1..len - 1].copy_from_slice(&digits);
        buf[len - 1] = b'Z';
        Timestamp(Stamp::Inline { len: len as u8, buf })
    }
}

impl From<String> for Timestamp {
    fn from(s: String) -> Self {
        Timestamp(Stamp::Owned(s))
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

thread_local! {
    /// The last second formatted on this thread (`2026-12-01T16:41:41`): only the milliseconds
    /// change between the lines of one second.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `humantime::format_rfc3339_millis`, with the date and time of day formatted once per second.
fn rfc3339_millis(t: std::time::SystemTime) -> Timestamp {
    let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) else {
        return humantime::format_rfc3339_millis(t).to_string().into();
    };
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let whole = humantime::format_rfc3339_seconds(t).to_string();
            cell.1 = whole.trim_end_matches('Z').to_string();
            cell.0 = secs;
        }
        Timestamp::with_millis(&cell.1, millis)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Condvar, Mutex};

    #[test]
    fn timestamps_are_humantimes() {
        use std::time::{Duration, UNIX_EPOCH};
        for ms in [0u64, 999, 1_000, 1_764_606_101_007, 1_764_606_101_999, 1_764_606_102_010, 4_102_444_799_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            // Twice: the second call takes the cached second.
            for _ in 0..2 {
                let ts = rfc3339_millis(t);
                assert_eq!(ts.as_str(), humantime::format_rfc3339_millis(t).to_string(), "{ms}");
                assert_eq!(ts.as_bytes(), ts.as_str().as_bytes(), "{ms}");
            }
        }
        let t = UNIX_EPOCH + Duration::from_nanos(1_764_606_101_123_999_999);
        assert_eq!(rfc3339_millis(t).as_str(), humantime::format_rfc3339_millis(t).to_string());
        // Longer than the inline buffer: kept in a string, the same text.
        let long = "x".repeat(40);
        assert_eq!(Timestamp::with_millis(&long, 7).as_str(), format!("{long}.007Z"));
        assert_eq!(Timestamp::with_millis(&"y".repeat(27), 999).as_str(), format!("{}.999Z", "y".repeat(27)));
        assert_eq!(Timestamp::with_millis(&"y".repeat(28), 0).as_str(), format!("{}.000Z", "y".repeat(28)));
    }

    /// A stdout that blocks until released, like a full pipe nobody reads.
    #[derive(Clone, Default)]
    struct Stuck(Arc<(Mutex<Written>, Condvar)>);

    /// Whether the stdout is released, and what was written to it.
    type Written = (bool, Vec<u8>);

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

    fn record<'a>(strings: [&'a str; 4], backend: Option<&'a str>, some: bool, micros: u64) -> AccessRecord<'a> {
        let [text, path, key, model] = strings;
        AccessRecord {
            ts: text.to_string().into(),
            request_id: text,
            client_ip: some.then_some(text),
            method: "POST",
            path,
            status: if some { 200 } else { 0 },
            duration_ms: Millis::from_micros(micros),
            ttfb_ms: some.then_some(Millis::from_micros(micros / 3)),
            ttft_ms: some.then_some(Millis::from_micros(micros % 1000)),
            bytes_in: 12,
            bytes_out: u64::MAX,
            key: some.then_some(key),
            route: Some(path),
            provider: some.then_some(text),
            backend,
            model: some.then_some(model),
            stream: some,
            prompt_tokens: some.then_some(7),
            completion_tokens: some.then_some(0),
            error: some.then_some(text),
            refusal: (!some).then_some(key),
        }
    }

    /// A duration is the number serde_json writes for its milliseconds as a float: every
    /// microsecond up to a second, steps to five minutes, then through the range to 2^50 µs
    /// and past it.
    #[test]
    fn millis_are_the_float_serde_json_writes() {
        let big = (0..64).map(|s| 1u64 << s).flat_map(|p| [p - 1, p, p + 1, p / 2 * 3 + 7]);
        let stepped = (0..20_000u64).map(|i| i * 450_359_962_737 + i % 1000);
        for micros in (0..1_000_000).chain((0..300_000_000).step_by(997)).chain(big).chain(stepped).chain([u64::MAX]) {
            let mut ours = Vec::new();
            Millis::from_micros(micros).write_json(&mut ours);
            let theirs = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{micros}");
        }
    }

    #[test]
    fn the_line_is_what_serde_json_writes() {
        let odd = "q\"uote\\ back\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f} é 日本 \u{2028}";
        // The backend as the line carries it: its text, written when the backend was built.
        let text = |a: &str| crate::fleet::Backend::new(a.parse().unwrap(), 1).addr_text;
        let (v6, v4) = (text("[2001:db8::1]:8443"), text("127.0.0.2:8000"));
        let (v6, v4) = (&*v6, &*v4);
        for (strings, backend, some, micros) in [
            (["plain", "/v1/chat/completions", "bench", "sim-model"], Some(v4), true, 1250),
            ([odd, odd, odd, odd], Some(v6), true, 12),
            (["", "", "", ""], None, false, 0),
            (["a", "/x", "k", "m"], None, true, 123_456_789_123),
            (["a", "/x", "k", "m"], Some(v4), false, u64::MAX),
            (["a", "/x", "k", "m"], Some(v4), true, 1 << 50),
        ] {
            let mut r = record(strings, backend, some, micros);
            // The time as the gateway takes it (held inline, copied as bytes), and as a string.
            for ts in [now_rfc3339(), r.ts.clone()] {
                r.ts = ts;
                let mut ours = Vec::new();
                r.write_json(&mut ours);
                let theirs = serde_json::to_vec(&r).unwrap();
                assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
            }
        }
    }

    /// A backend's text is what serde_json wrote for its address when the line carried the
    /// address itself.
    #[test]
    fn backend_text_is_the_address_as_serde_json_wrote_it() {
        for a in
            ["127.0.0.2:8000", "0.0.0.0:0", "255.255.255.255:65535", "10.1.20.3:80", "[2001:db8::1]:8443", "[::1]:1"]
        {
            let addr: SocketAddr = a.parse().unwrap();
            let b = crate::fleet::Backend::new(addr, 1);
            assert_eq!(serde_json::to_string(&*b.addr_text).unwrap(), serde_json::to_string(&addr).unwrap(), "{a}");
            assert!(plain(b.addr_text.as_bytes()), "{a}");
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "a".repeat(7),
            "a".repeat(8),
            "a".repeat(9),
            "0123456789abcdef0123456789abcdef".into(),
            "2026-12-02T04:05:06.789Z".into(),
            "\u{7f}\u{80}\u{ff}é日本\u{2028}\u{10ffff}".repeat(3),
        ];
        // Every ASCII byte (and a multi-byte character) at every position of strings around
        // the word size, between safe bytes.
        let specials = (0u8..0x80).map(char::from).chain(['é', '\u{2028}']);
        for c in specials {
            for len in [1usize, 7, 8, 9, 15, 16, 17, 24] {
                for at in 0..len {
                    let mut s: String = "x".repeat(len);
                    s.replace_range(at..at + 1, &c.to_string());
                    cases.push(s);
                }
            }
        }
        cases.push("\"\\\n\r\t\u{0}\u{1f}".repeat(5));
        for s in &cases {
            let mut ours = Vec::new();
            json_str(&mut ours, s);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn the_word_test_agrees_with_the_byte_test() {
        let bad = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let interesting = [0x00u8, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Words built mostly from bytes next to the boundaries.
            let bytes: [u8; 8] = std::array::from_fn(|i| {
                let r = (x >> (i * 8)) as u8;
                if r & 1 == 0 {
                    interesting[usize::from(r >> 1) % interesting.len()]
                } else {
                    r
                }
            });
            assert_eq!(needs_escape(u64::from_le_bytes(bytes)), bytes.iter().any(|&c| bad(c)), "{bytes:?}");
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_a_request_and_drops_are_counted() {
        let out = Stuck::default();
        let p = start(out.clone()).unwrap();
        let dropped = || crate::observe::metrics::metrics().unwrap().access_log_dropped.get();
        let before = dropped();
        let started = std::time::Instant::now();
        // The writer takes a first batch and blocks on the stuck stdout; MAX_PENDING bytes
        // wait; the rest are dropped.
        let line = [&[b'x'; 1023][..]].concat();
        let n = MAX_PENDING / 1024 * 3;
        for _ in 0..n {
            append(&p, |b| {
                b.extend_from_slice(&line);
                true
            });
            if started.elapsed() < FLUSH_EVERY * 3 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "a request waited on the log");
        let lost = dropped() - before;
        assert!(lost >= (n - 2 * MAX_PENDING / 1024) as u64, "dropped {lost} of {n}");
        // Released: every line not dropped arrives whole.
        {
            let (lock, cv) = &*out.0;
            lock.lock().unwrap().0 = true;
            cv.notify_all();
        }
        let want = n as u64 - lost;
        for _ in 0..500 {
            let got = out.0 .0.lock().unwrap().1.iter().filter(|&&b| b == b'\n').count() as u64;
            if got == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("pending lines were not written");
    }
}
