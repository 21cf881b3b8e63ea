//! Request framing the gateway refuses to guess at. Pingora's HTTP/1 parser accepts some
//! shapes that another HTTP hop may read differently (docs/abuse.md lists what it does with
//! each): when both `Content-Length` and `Transfer-Encoding` are sent it drops the length and
//! forwards; it accepts bare LF line ends and `Transfer-Encoding: identity, chunked`. A proxy
//! that forwards such a request lets the two sides disagree on where it ends — request
//! smuggling. So the raw header block, as received, must be plain: CRLF line ends, no folded
//! lines, at most one `Content-Length` (digits only) and never together with
//! `Transfer-Encoding`, which may only be a single `chunked`. And it must be of a size the
//! gateway is willing to carry (431 beyond). Pure functions, so fuzzers can call them.

/// Largest request header block accepted, request line included (431 beyond). Pingora's own
/// hard limit is 1 MiB; common servers take 8–64 KiB, and no API client sends more.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields accepted (431 beyond). Pingora's own hard limit is 256.
pub const MAX_HEADERS: usize = 100;

/// Why a request's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    HeaderTooLarge,
    TooManyHeaders,
    BareLf,
    ObsFold,
    LengthAndChunked,
    ContentLength,
    TransferEncoding,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeaderTooLarge | Refusal::TooManyHeaders => 431,
            _ => 400,
        }
    }

    /// Metric label (bounded).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::BareLf => "bare_lf",
            Refusal::ObsFold => "obs_fold",
            Refusal::LengthAndChunked => "length_and_chunked",
            Refusal::ContentLength => "content_length",
            Refusal::TransferEncoding => "transfer_encoding",
        }
    }

    pub fn message(self) -> String {
        match self {
            Refusal::HeaderTooLarge => format!("request header is larger than {MAX_HEADER_BYTES} bytes"),
            Refusal::TooManyHeaders => format!("request has more than {MAX_HEADERS} header fields"),
            Refusal::BareLf => "request header lines must end in CRLF, not a bare LF".into(),
            Refusal::ObsFold => "folded (obs-fold) header lines are not accepted".into(),
            Refusal::LengthAndChunked => "request has both Content-Length and Transfer-Encoding".into(),
            Refusal::ContentLength => "request needs at most one Content-Length, of digits only".into(),
            Refusal::TransferEncoding => "the only Transfer-Encoding accepted is a single \"chunked\"".into(),
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// Checks an HTTP/1 request header block as received: the request line through the blank
/// line that ends it. The block is read eight bytes at a time for its LFs, each of which ends
/// a line: a block is a few hundred bytes of short lines, where a search call per line
/// (`memchr`) costs more in setting up than in searching.
pub fn check_h1(raw: &[u8]) -> Result<(), Refusal> {
    if raw.len() > MAX_HEADER_BYTES {
        return Err(Refusal::HeaderTooLarge);
    }
    let mut scan = Scan::default();
    let (words, tail) = raw.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        if scan.lines_ending_in(raw, i * 8, *word)? {
            return scan.fields.verdict();
        }
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail); // padded with zeros, not LFs
    scan.lines_ending_in(raw, words.len() * 8, last)?;
    scan.fields.verdict()
}

#[derive(Default)]
struct Scan {
    /// Where the current line starts; `None` in the request line.
    start: Option<usize>,
    fields: Fields,
}

impl Scan {
    /// The lines that end in the eight bytes `word` found at `at`: whether the header block
    /// ended there.
    #[inline(always)]
    fn lines_ending_in(&mut self, raw: &[u8], at: usize, word: [u8; 8]) -> Result<bool, Refusal> {
        let mut lfs = lf_bytes(u64::from_le_bytes(word));
        while lfs != 0 {
            let end = at + lfs.trailing_zeros() as usize / 8;
            lfs &= lfs - 1;
            if end == 0 || raw[end - 1] != b'\r' {
                return Err(Refusal::BareLf);
            }
            let Some(first) = self.start.replace(end + 1) else {
                continue; // the request line
            };
            let line = raw.get(first..end - 1).unwrap_or_default();
            match line.first() {
                None => return Ok(true), // the blank line
                Some(b' ' | b'\t') => return Err(Refusal::ObsFold),
                Some(&lead) => self.fields.add(lead, line)?,
            }
        }
        Ok(false)
    }
}

/// The fields of a header block seen so far: how many, and of the two names looked at.
#[derive(Default)]
struct Fields {
    count: usize,
    lengths: usize,
    encodings: usize,
}

impl Fields {
    /// A field line (not empty, not starting with white space), whose first byte is `lead`.
    #[inline(always)]
    fn add(&mut self, lead: u8, line: &[u8]) -> Result<(), Refusal> {
        self.count += 1;
        if self.count > MAX_HEADERS {
            return Err(Refusal::TooManyHeaders);
        }
        // The line does not start with white space, so its name starts with its first byte:
        // only a `C` can begin `Content-Length`, only a `T` `Transfer-Encoding`.
        match lead | 0x20 {
            b'c' => self.content_length(line),
            b't' => self.transfer_encoding(line),
            _ => Ok(()),
        }
    }

    /// Not inlined, nor is [`Self::transfer_encoding`]: most lines are neither, and the loop
    /// over the words then keeps its values in registers.
    #[inline(never)]
    fn content_length(&mut self, line: &[u8]) -> Result<(), Refusal> {
        let Some(value) = CONTENT_LENGTH.value(line) else { return Ok(()) };
        self.lengths += 1;
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::ContentLength);
        }
        Ok(())
    }

    #[inline(never)]
    fn transfer_encoding(&mut self, line: &[u8]) -> Result<(), Refusal> {
        let Some(value) = TRANSFER_ENCODING.value(line) else { return Ok(()) };
        self.encodings += 1;
        if !value.eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::TransferEncoding);
        }
        Ok(())
    }

    fn verdict(&self) -> Result<(), Refusal> {
        match (self.lengths, self.encodings) {
            (1.., 1..) => Err(Refusal::LengthAndChunked),
            (2.., _) => Err(Refusal::ContentLength),
            (_, 2..) => Err(Refusal::TransferEncoding),
            _ => Ok(()),
        }
    }
}

/// The top bit of each byte of `w` that is an LF, and no other bit. Exact for every byte (no
/// borrow from one byte into the next): a byte's top bit is set in `(x & 0x7f) + 0x7f | x`
/// exactly when the byte `x` is not zero.
fn lf_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ 0x0a0a_0a0a_0a0a_0a0a;
    !(((x & LOW7) + LOW7) | x | LOW7)
}

const CONTENT_LENGTH: FieldName = FieldName::new(b"content-length");
const TRANSFER_ENCODING: FieldName = FieldName::new(b"transfer-encoding");

/// A field name the check looks for (8 to 24 bytes, lower case), as three overlapping 8-byte
/// words of it and the case bit of each of their letters: a line's first bytes compare with
/// it in any case in three word comparisons, since `b | 0x20` is the letter `l` exactly when
/// `b` is `l` in either case (and the name's other bytes must match exactly).
struct FieldName {
    len: usize,
    /// (where the word starts, the word, its letters' case bits).
    words: [(usize, u64, u64); 3],
}

impl FieldName {
    const fn new(name: &[u8]) -> Self {
        let len = name.len();
        assert!(len >= 8 && len <= 24);
        let mut words = [(0, 0, 0); 3];
        let mut k = 0;
        while k < 3 {
            let at = if 8 * k < len - 8 { 8 * k } else { len - 8 };
            let (mut word, mut case) = (0u64, 0u64);
            let mut j = 0;
            while j < 8 {
                let b = name[at + j];
                word |= (b as u64) << (8 * j);
                if b.is_ascii_lowercase() {
                    case |= 0x20 << (8 * j);
                }
                j += 1;
            }
            words[k] = (at, word, case);
            k += 1;
        }
        FieldName { len, words }
    }

    /// Whether `line` starts with this name, in any case.
    #[inline(always)]
    fn starts(&self, line: &[u8]) -> bool {
        line.len() >= self.len
            && self.words.iter().all(|&(at, word, case)| {
                line.get(at..).and_then(<[u8]>::first_chunk).is_some_and(|w| u64::from_le_bytes(*w) | case == word)
            })
    }

    /// The value (trimmed) of a field line of this name, with white space before the colon
    /// allowed; `None` for a line of another name. The same as splitting the line at its first
    /// colon and trimming both sides: a name has no colon, so the first colon of a line of
    /// that name is the one after the name and its white space.
    fn value<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        if !self.starts(line) {
            return None;
        }
        let rest = line.get(self.len..)?;
        let colon = rest.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
        (rest[colon] == b':').then(|| trim(&rest[colon + 1..]))
    }
}

/// For HTTP/2, whose framing is not in the header: the number of fields and their size
/// (names and values).
pub fn check_size(fields: usize, bytes: usize) -> Result<(), Refusal> {
    if fields > MAX_HEADERS {
        Err(Refusal::TooManyHeaders)
    } else if bytes > MAX_HEADER_BYTES {
        Err(Refusal::HeaderTooLarge)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fields: &str) -> Vec<u8> {
        format!("POST /v1/x HTTP/1.1\r\nHost: h\r\n{fields}\r\n").into_bytes()
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(check_h1(&req("")), Ok(()));
        assert_eq!(check_h1(&req("Content-Length: 12\r\n")), Ok(()));
        assert_eq!(check_h1(&req("transfer-encoding:  Chunked \r\n")), Ok(()));
        assert_eq!(check_h1(&req("X-A: a\r\n")), Ok(()));
        // A body after the header block is not looked at.
        let mut r = req("Content-Length: 3\r\n");
        r.extend_from_slice(b"a\nb");
        assert_eq!(check_h1(&r), Ok(()));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases = [
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", Refusal::LengthAndChunked),
            ("Transfer-Encoding: chunked\r\ncontent-length: 5\r\n", Refusal::LengthAndChunked),
            ("Content-Length: 5\r\nContent-Length: 6\r\n", Refusal::ContentLength),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", Refusal::ContentLength),
            ("Content-Length: 5, 5\r\n", Refusal::ContentLength),
            ("Content-Length: +5\r\n", Refusal::ContentLength),
            ("Content-Length:\r\n", Refusal::ContentLength),
            ("Transfer-Encoding: chunked, identity\r\n", Refusal::TransferEncoding),
            ("Transfer-Encoding: identity, chunked\r\n", Refusal::TransferEncoding),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", Refusal::TransferEncoding),
            ("Transfer-Encoding: xchunked\r\n", Refusal::TransferEncoding),
            ("X-A: a\r\n b\r\n", Refusal::ObsFold),
            ("X-A: a\r\n\tTransfer-Encoding: chunked\r\n", Refusal::ObsFold),
            ("X-A: a\nContent-Length: 0\r\n", Refusal::BareLf),
        ];
        for (fields, want) in cases {
            assert_eq!(check_h1(&req(fields)), Err(want), "{fields:?}");
        }
        // The names in any case, with white space before the colon; lines that only look alike.
        let cases = [
            ("CONTENT-LENGTH: 1\r\ncOnTeNt-LeNgTh: 1\r\n", Err(Refusal::ContentLength)),
            ("Content-Length : 1\r\nTransfer-Encoding\t: chunked\r\n", Err(Refusal::LengthAndChunked)),
            ("TRANSFER-ENCODING: gzip\r\n", Err(Refusal::TransferEncoding)),
            ("Content-Length: x\r\n", Err(Refusal::ContentLength)),
            (": chunked\r\nContent-Length: 1\r\n", Ok(())),
            ("Content-Lengthy: x\r\nTransfer-Encodings: x\r\nContent-Type: x\r\nTE: x\r\n", Ok(())),
            ("Content-Length 5\r\nTransfer-Encoding gzip\r\ncontent-length: 5\r\n", Ok(())),
            ("X-Content-Length: x\r\nX: Transfer-Encoding: gzip\r\n", Ok(())),
        ];
        for (fields, want) in cases {
            assert_eq!(check_h1(&req(fields)), want, "{fields:?}");
        }
        // Non-ASCII bytes in place of the first letter are other names; `\x43` is `C`.
        let mut odd = b"POST / HTTP/1.1\r\n\xc3ontent-length: x\r\n\xd4ransfer-encoding: x\r\n".to_vec();
        odd.extend_from_slice(b"\x43ontent-length: 2\r\n\r\n");
        assert_eq!(check_h1(&odd), Ok(()));
        assert_eq!(check_h1(b"GET / HTTP/1.1\nHost: h\n\n"), Err(Refusal::BareLf));
        assert_eq!(check_h1(b"\nGET / HTTP/1.1\r\n\r\n"), Err(Refusal::BareLf));
    }

    /// The check as it was written first, without the fast path for names that are not
    /// looked at.
    fn check_h1_first(raw: &[u8]) -> Result<(), Refusal> {
        if raw.len() > MAX_HEADER_BYTES {
            return Err(Refusal::HeaderTooLarge);
        }
        let (mut fields, mut lengths, mut encodings) = (0usize, 0usize, 0usize);
        let mut start = 0;
        let mut first = true;
        for end in memchr::memchr_iter(b'\n', raw) {
            if end == 0 || raw[end - 1] != b'\r' {
                return Err(Refusal::BareLf);
            }
            let line = &raw[start..end - 1];
            start = end + 1;
            if first {
                first = false;
                continue;
            }
            if line.is_empty() {
                break;
            }
            if matches!(line[0], b' ' | b'\t') {
                return Err(Refusal::ObsFold);
            }
            fields += 1;
            if fields > MAX_HEADERS {
                return Err(Refusal::TooManyHeaders);
            }
            let Some(colon) = memchr::memchr(b':', line) else { continue };
            let (name, value) = (trim(&line[..colon]), trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                lengths += 1;
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err(Refusal::ContentLength);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                encodings += 1;
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(Refusal::TransferEncoding);
                }
            }
        }
        match (lengths, encodings) {
            (1.., 1..) => Err(Refusal::LengthAndChunked),
            (2.., _) => Err(Refusal::ContentLength),
            (_, 2..) => Err(Refusal::TransferEncoding),
            _ => Ok(()),
        }
    }

    #[test]
    fn the_check_agrees_with_the_first_version() {
        let pieces: [&[u8]; 30] = [
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b":",
            b"Content-Length",
            b"content-length",
            b"CONTENT-LENGTH ",
            b"Transfer-Encoding",
            b"transfer-encoding\t",
            b"chunked",
            b" Chunked ",
            b"identity",
            b"12",
            b"+1",
            b"Host: h",
            b"X-A: a",
            b"Content-Type: x",
            b"TE: trailers",
            b"\xc3\xa9",
            b"\x00",
            b"C",
            b"T",
            b"Content-Length:",
            b"transfer-encoding:",
            b"\x0b\n",
            b"content-lengt",
            b"Transfer-Encoding :chunked",
            b"\x8a",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            let mut raw = b"POST /v1/x HTTP/1.1\r\n".to_vec();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 30) as usize;
            for i in 0..n {
                raw.extend_from_slice(pieces[((x >> (i % 8 * 8)) as usize + i * 7) % pieces.len()]);
                if (x >> (i % 60)) & 3 == 0 {
                    raw.extend_from_slice(b"\r\n");
                }
            }
            if x & 1 == 0 {
                raw.extend_from_slice(b"\r\n\r\n");
            }
            assert_eq!(check_h1(&raw), check_h1_first(&raw), "{:?}", String::from_utf8_lossy(&raw));
        }
        // The shapes of the other tests at every offset in a word (request lines of every
        // length modulo 16).
        let shapes = [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length : 1\r\nX: y\r\n",
            "transfer-encoding:  Chunked \r\n",
            "X-A: a\r\n b\r\n",
            "X-A: a\nContent-Length: 0\r\n",
            "Content-Length: 12\r\n",
            "",
        ];
        for shape in shapes {
            for pad in 0..16 {
                let raw = format!("GET /{} HTTP/1.1\r\nHost: h\r\n{shape}\r\n", "a".repeat(pad)).into_bytes();
                assert_eq!(check_h1(&raw), check_h1_first(&raw), "{shape:?} {pad}");
                assert_eq!(check_h1(&raw[..raw.len() - 1]), check_h1_first(&raw[..raw.len() - 1]), "{shape:?} {pad}");
            }
        }
        // Many fields, each case well-formed.
        for n in [0, 1, MAX_HEADERS - 1, MAX_HEADERS, MAX_HEADERS + 1] {
            let many: String = (0..n).map(|i| format!("Content-Type-{i}: v\r\n")).collect();
            assert_eq!(check_h1(&req(&many)), check_h1_first(&req(&many)));
        }
    }

    #[test]
    fn lf_bytes_are_exact() {
        // Every byte value next to LFs and other values (the mask must not borrow across bytes).
        for b in 0..=255u8 {
            for lf in 0..8 {
                for other in [0u8, 1, 0x0a, 0x0b, 0x8a, 0xff, b.wrapping_add(1)] {
                    let mut w = [b; 8];
                    w[lf] = b'\n';
                    w[(lf + 3) % 8] = other;
                    let want: u64 = (0..8).filter(|&i| w[i] == b'\n').map(|i| 0x80 << (8 * i)).sum();
                    assert_eq!(lf_bytes(u64::from_le_bytes(w)), want, "{w:?}");
                }
            }
            assert_eq!(lf_bytes(u64::from_le_bytes([b; 8])), if b == b'\n' { 0x8080_8080_8080_8080 } else { 0 });
        }
    }

    #[test]
    fn field_names_in_any_case_and_nothing_else() {
        for name in [&CONTENT_LENGTH, &TRANSFER_ENCODING] {
            let lower = if name.len == 14 { b"content-length".as_slice() } else { b"transfer-encoding" };
            // Each byte of the name replaced by every value: a match exactly when the byte is
            // the name's in either case.
            for i in 0..name.len {
                for b in 0..=255u8 {
                    let mut line = lower.to_vec();
                    line[i] = b;
                    line.extend_from_slice(b": 1");
                    assert_eq!(name.starts(&line), line[..name.len].eq_ignore_ascii_case(lower), "{line:?}");
                }
            }
            assert!(!name.starts(&lower[..name.len - 1]));
        }
    }

    #[test]
    fn size_and_count_limits() {
        let many: String = (0..MAX_HEADERS - 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(check_h1(&req(&many)), Ok(()), "Host plus {} fields is the limit", MAX_HEADERS - 1);
        assert_eq!(check_h1(&req(&format!("{many}X-Last: v\r\n"))), Err(Refusal::TooManyHeaders));
        let big = format!("X-Big: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(check_h1(&req(&big)), Err(Refusal::HeaderTooLarge));
        assert_eq!(check_size(MAX_HEADERS, MAX_HEADER_BYTES), Ok(()));
        assert_eq!(check_size(MAX_HEADERS + 1, 10), Err(Refusal::TooManyHeaders));
        assert_eq!(check_size(1, MAX_HEADER_BYTES + 1), Err(Refusal::HeaderTooLarge));
        assert_eq!(Refusal::TooManyHeaders.status(), 431);
        assert_eq!(Refusal::BareLf.status(), 400);
    }
}
