//! The `model` field of a `multipart/form-data` body (`/v1/audio/transcriptions`, …), read by
//! a small strict parser: whatever another parser could read differently is refused rather
//! than guessed at:
//! - the body starts with the first delimiter, every occurrence of `--boundary` is a
//!   delimiter (preceded by CRLF), the close delimiter ends it (an optional CRLF after);
//! - part headers end with a blank line, have no folded lines, and at most one
//!   `Content-Disposition`, which must be `form-data` with exactly one `name` (`name*`, the
//!   RFC 2231 form Python's parser decodes, is refused);
//! - the `model` field: spelt exactly so, given once, no `filename`, no
//!   `Content-Transfer-Encoding` other than 7bit/8bit/binary (Python's parser decodes base64
//!   and quoted-printable), UTF-8 charset if any, a UTF-8 value without control characters.
//!
//! Bounded: one linear pass; at most [`MAX_PARTS`] parts of at most [`MAX_HEADER`] header bytes.

use super::ScanError;

/// Parts in one form (Starlette's default `max_fields` is 1000).
pub const MAX_PARTS: usize = 1000;
/// Header bytes of one part.
pub const MAX_HEADER: usize = 16 * 1024;
/// Longest model name read from a form.
pub const MAX_MODEL: usize = 1024;

fn err(msg: impl Into<String>) -> ScanError {
    ScanError::Multipart(msg.into())
}

/// The boundary of a `multipart/form-data` content type (charset, if given, must be UTF-8).
pub fn multipart_boundary(content_type: &str) -> Result<String, ScanError> {
    let (media, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(err("the content type is not multipart/form-data"));
    }
    let params = parse_params(params)?;
    let mut boundary = None;
    for (name, value) in params {
        match name.as_str() {
            "boundary" if boundary.is_none() => boundary = Some(value),
            "boundary" => return Err(err("the boundary is given twice")),
            "charset" if !is_utf8(&value) => return Err(err("only the UTF-8 charset is accepted")),
            _ => {}
        }
    }
    let boundary = boundary.ok_or_else(|| err("the content type has no boundary"))?;
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    if boundary.is_empty() || boundary.len() > 70 || !boundary.bytes().all(ok_char) || boundary.ends_with(' ') {
        return Err(err("the boundary is not 1 to 70 allowed characters"));
    }
    Ok(boundary)
}

/// The `model` field of a `multipart/form-data` body; `None` when the form has none.
/// Never panics, for any input.
pub fn multipart_model(body: &[u8], content_type: &str) -> Result<Option<String>, ScanError> {
    let boundary = multipart_boundary(content_type)?;
    let mut model = None;
    for part in parts(body, boundary.as_bytes())? {
        let (headers, value) = split_part(part)?;
        let field = field_of(headers)?;
        if !field.name.eq_ignore_ascii_case("model") {
            continue;
        }
        if field.name != "model" {
            return Err(err("the model field must be named exactly \"model\""));
        }
        if model.is_some() {
            return Err(err("the model field is given more than once"));
        }
        if field.file || field.encoded || field.foreign_charset {
            return Err(err("the model field must be a plain UTF-8 form value"));
        }
        let text = std::str::from_utf8(value).map_err(|_| err("the model field is not UTF-8"))?;
        if text.len() > MAX_MODEL || text.chars().any(char::is_control) {
            return Err(err("the model field is too long or has control characters"));
        }
        model = Some(text.to_string());
    }
    Ok(model.filter(|m| !m.is_empty()))
}

/// Offset of the close delimiter (`--boundary--`) of a form that [`multipart_model`] accepts:
/// a part (`--boundary CRLF headers CRLF CRLF value CRLF`) inserted there is the form's last.
pub fn close_offset(body: &[u8], boundary: &[u8]) -> Result<usize, ScanError> {
    parts(body, boundary)?;
    let delim = delimiter(boundary);
    let last = memchr::memmem::rfind(body, &delim).ok_or_else(|| err("no close delimiter"))?;
    Ok(last)
}

fn delimiter(boundary: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(boundary.len() + 2);
    d.extend_from_slice(b"--");
    d.extend_from_slice(boundary);
    d
}

/// The parts' bytes (headers and value), between delimiters.
fn parts<'a>(body: &'a [u8], boundary: &[u8]) -> Result<Vec<&'a [u8]>, ScanError> {
    let delim = delimiter(boundary);
    let at: Vec<usize> = memchr::memmem::find_iter(body, &delim).take(MAX_PARTS + 2).collect();
    if at.len() > MAX_PARTS + 1 {
        return Err(err(format!("more than {MAX_PARTS} parts")));
    }
    if at.first() != Some(&0) {
        return Err(err("the body must start with the boundary"));
    }
    let mut out = Vec::with_capacity(at.len());
    for (i, &start) in at.iter().enumerate() {
        if start > 0 && body.get(start.saturating_sub(2)..start) != Some(b"\r\n".as_slice()) {
            return Err(err("the boundary appears inside a part"));
        }
        let after = &body[start + delim.len()..];
        match at.get(i + 1) {
            Some(&next) => {
                if !after.starts_with(b"\r\n") {
                    return Err(err("a delimiter is not followed by CRLF"));
                }
                // From after the CRLF to the CRLF in front of the next delimiter.
                let from = start + delim.len() + 2;
                let to = next.saturating_sub(2);
                if to < from {
                    return Err(err("a part is cut short"));
                }
                out.push(&body[from..to]);
            }
            None => {
                if !(after == b"--" || after == b"--\r\n") {
                    return Err(err("the form does not end with the close delimiter"));
                }
            }
        }
    }
    Ok(out)
}

/// Headers and value of one part.
fn split_part(part: &[u8]) -> Result<(&[u8], &[u8]), ScanError> {
    if let Some(value) = part.strip_prefix(b"\r\n") {
        return Ok((&[], value)); // no headers at all
    }
    let end = memchr::memmem::find(part, b"\r\n\r\n").ok_or_else(|| err("a part's headers do not end"))?;
    if end > MAX_HEADER {
        return Err(err("a part's headers are too large"));
    }
    Ok((&part[..end], &part[end + 4..]))
}

#[derive(Default)]
struct Field {
    name: String,
    file: bool,
    /// A `Content-Transfer-Encoding` that changes the bytes.
    encoded: bool,
    /// A part `Content-Type` with a charset other than UTF-8.
    foreign_charset: bool,
}

fn field_of(headers: &[u8]) -> Result<Field, ScanError> {
    let text = std::str::from_utf8(headers).map_err(|_| err("a part's headers are not UTF-8"))?;
    let mut field = Field::default();
    let mut disposition = false;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(err("folded part headers are not accepted"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| err("a part header has no colon"))?;
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(err("a part header name is malformed"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            if disposition {
                return Err(err("a part has two Content-Disposition headers"));
            }
            disposition = true;
            disposition_into(value, &mut field)?;
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            field.encoded |= !["7bit", "8bit", "binary"].iter().any(|e| value.eq_ignore_ascii_case(e));
        } else if name.eq_ignore_ascii_case("content-type") {
            let params = value.split_once(';').map(|(_, p)| p).unwrap_or("");
            field.foreign_charset |= parse_params(params)?.iter().any(|(n, v)| n == "charset" && !is_utf8(v));
        }
    }
    if !disposition {
        return Err(err("a part has no Content-Disposition"));
    }
    Ok(field)
}

fn disposition_into(value: &str, field: &mut Field) -> Result<(), ScanError> {
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(err("a part is not form-data"));
    }
    let mut name = None;
    for (k, v) in parse_params(params)? {
        if k.ends_with('*') {
            return Err(err("extended (RFC 2231) parameters are not accepted"));
        }
        match k.as_str() {
            "name" if name.is_none() => name = Some(v),
            "name" => return Err(err("a part is named twice")),
            "filename" => field.file = true,
            _ => {}
        }
    }
    field.name = name.ok_or_else(|| err("a part has no name"))?;
    Ok(())
}

fn is_utf8(charset: &str) -> bool {
    charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
}

/// `; a=b; c="d \" e"` → `[("a","b"), ("c","d \" e")]`, names lower-cased. A parameter
/// given twice is refused.
fn parse_params(s: &str) -> Result<Vec<(String, String)>, ScanError> {
    let b = s.as_bytes();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b';') {
            i += 1;
        }
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            i += 1;
        }
        let name = s.get(start..i).unwrap_or("").trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' || name.is_empty() {
            return Err(err("a header parameter has no value"));
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut value = Vec::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(err("a quoted header parameter does not end")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b.get(i + 1).ok_or_else(|| err("a quoted header parameter does not end"))?;
                        value.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] != b';' {
                return Err(err("text after a quoted header parameter"));
            }
        } else {
            while i < b.len() && b[i] != b';' {
                value.push(b[i]);
                i += 1;
            }
            while value.last().is_some_and(|c| *c == b' ' || *c == b'\t') {
                value.pop();
            }
        }
        let value = String::from_utf8(value).map_err(|_| err("a header parameter is not UTF-8"))?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(err(format!("the header parameter {name:?} is given twice")));
        }
        out.push((name, value));
    }
}
