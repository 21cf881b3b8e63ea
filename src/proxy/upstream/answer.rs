//! The backend's answer header arrived, through Pingora's proxy loop or a relay: time it,
//! tell the circuit ([`super::failure::responded`]), refuse it if it came compressed
//! ([`check_encoding`]), start the usage observer, seal MCP sessions.

use super::failure::{self, ENCODED_ANSWER};
use super::request::observed;
use crate::proxy::ctx::{Ctx, Routed};
use crate::proxy::long_lived;
use pingora::prelude::*;
use pingora_http::ResponseHeader;
use std::time::Instant;

pub fn answered(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    ctx.upstream.header_at = Some(Instant::now());
    let fields = Fields::read(resp);
    if let Some(r) = &ctx.routed {
        failure::responded(r, &ctx.upstream, resp.status.as_u16());
        check_encoding(r, resp, fields.coded)?;
    }
    ctx.usage.start(fields.content_type);
    long_lived::upstream_response(resp, ctx)
}

/// What the gateway reads of an answer's fields, in one pass over them (rather than a lookup
/// per name): its first `Content-Type` (`None` when that one is not text), and whether a
/// `Content-Encoding` other than `identity` or a transfer coding other than `chunked` is among
/// its values (a value that is not text counts as one).
struct Fields<'a> {
    content_type: Option<&'a str>,
    coded: bool,
}

impl<'a> Fields<'a> {
    fn read(resp: &'a ResponseHeader) -> Self {
        let mut fields = Fields { content_type: None, coded: false };
        let mut typed = false;
        for (name, value) in resp.headers.iter() {
            if *name == http::header::CONTENT_TYPE {
                if !typed {
                    typed = true;
                    fields.content_type = value.to_str().ok();
                }
            } else if *name == http::header::CONTENT_ENCODING {
                fields.coded |= coded(value, "identity");
            } else if *name == http::header::TRANSFER_ENCODING {
                fields.coded |= coded(value, "chunked");
            }
        }
        fields
    }
}

/// Whether `value` lists a coding other than `plain` (in any case).
fn coded(value: &http::HeaderValue, plain: &str) -> bool {
    let Ok(v) = value.to_str() else { return true };
    v.split(',').map(str::trim).any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(plain))
}

/// An observed answer must arrive as plain bytes: a `Content-Encoding` other than `identity`
/// (or a transfer coding other than `chunked`) would hide `usage` and defeat the rewrites, so
/// it is refused (502) rather than passed on unaccounted. Answers without a body pass.
fn check_encoding(routed: &Routed, resp: &ResponseHeader, coded: bool) -> Result<()> {
    let status = resp.status.as_u16();
    if !observed(routed) || status == 204 || status == 304 || resp.status.is_informational() {
        return Ok(());
    }
    if coded {
        return Error::e_explain(ENCODED_ANSWER, "the upstream compressed an answer the gateway must read");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `answered` read before the single pass: a lookup per name.
    fn by_lookup(resp: &ResponseHeader) -> (Option<&str>, bool) {
        let coded = |name: http::header::HeaderName, plain: &[&str]| {
            resp.headers.get_all(name).iter().any(|v| {
                let Ok(v) = v.to_str() else { return true };
                v.split(',').map(str::trim).any(|c| !c.is_empty() && !plain.iter().any(|p| c.eq_ignore_ascii_case(p)))
            })
        };
        let ct = resp.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        (
            ct,
            coded(http::header::CONTENT_ENCODING, &["identity"])
                || coded(http::header::TRANSFER_ENCODING, &["chunked"]),
        )
    }

    #[test]
    fn one_pass_reads_what_the_lookups_read() {
        let names = ["content-type", "Content-Encoding", "transfer-encoding", "content-length", "x-other"];
        let values: [&[u8]; 12] = [
            b"application/json",
            b"text/event-stream",
            b"identity",
            b"IDENTITY, identity",
            b"gzip",
            b"chunked",
            b"Chunked ,",
            b"gzip, chunked",
            b"",
            b" , ",
            b"caf\xc3\xa9",
            b"br",
        ];
        // Every sequence of up to three fields over these names and values.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut r = seed;
            for _ in 0..(r % 4) {
                r /= 4;
                let name = names[(r % names.len() as u64) as usize];
                r /= names.len() as u64;
                let value = http::HeaderValue::from_bytes(values[(r % values.len() as u64) as usize]).unwrap();
                r /= values.len() as u64;
                resp.append_header(name, value).unwrap();
            }
            let f = Fields::read(&resp);
            assert_eq!((f.content_type, f.coded), by_lookup(&resp), "{:?}", resp.headers);
        }
    }
}
