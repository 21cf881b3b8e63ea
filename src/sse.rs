//! Server-sent events as bytes: the one event splitter and substring check shared by the
//! request path (usage observer, usage-event removal) and MCP (endpoint rewrite). Events may
//! be split across chunks or share one, and lines end with LF, CRLF or CR.

/// One line of an event, without and with its line ending.
pub struct Line<'a> {
    pub text: &'a [u8],
    pub eol: &'a [u8],
}

/// Walks the first complete event in `buf` (ended by a blank line), handing each of its lines
/// to `on_line`; returns its length including the blank line, or `None` until it is whole.
fn walk_event<'a>(buf: &'a [u8], mut on_line: impl FnMut(Line<'a>)) -> Option<usize> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let i = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let eol_len = if rest[i] == b'\r' {
            match rest.get(i + 1) {
                Some(b'\n') => 2,
                Some(_) => 1,
                None => return None, // a CR at the end: its LF may be in the next chunk
            }
        } else {
            1
        };
        let text = &rest[..i];
        let eol = &rest[i..i + eol_len];
        pos += i + eol_len;
        if text.is_empty() {
            return Some(pos);
        }
        on_line(Line { text, eol });
    }
}

/// Length of the first complete event in `buf`, blank line included.
pub fn event_len(buf: &[u8]) -> Option<usize> {
    walk_event(buf, |_| {})
}

/// The first complete event in `buf`: its length (blank line included) and its lines.
pub fn next_event(buf: &[u8]) -> Option<(usize, Vec<Line<'_>>)> {
    let mut lines = Vec::new();
    let len = walk_event(buf, |l| lines.push(l))?;
    Some((len, lines))
}

/// Byte substring search (SIMD via memchr): the hot-path check before any JSON parsing.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line_with_any_line_ending() {
        assert_eq!(event_len(b"data: a\n\ndata: b\n\n"), Some(9));
        assert_eq!(event_len(b"data: a\r\n\r\nrest"), Some(11));
        assert_eq!(event_len(b"data: a\r\rrest"), Some(9));
        assert_eq!(event_len(b"data: a\n"), None);
        assert_eq!(event_len(b"data: a\r\n\r"), None);
        let (n, lines) = next_event(b"event: e\r\ndata: x\n\n").unwrap();
        assert_eq!(n, 19);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].eol, b"\r\n");
        assert!(contains(b"{\"usage\":1}", b"\"usage\""));
        assert!(!contains(b"{}", b"\"usage\""));
    }
}
