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
    if let Some(r) = &ctx.routed {
        failure::responded(r, &ctx.upstream, resp.status.as_u16());
        check_encoding(r, resp)?;
    }
    let ct = resp.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    ctx.usage.start(ct);
    long_lived::upstream_response(resp, ctx)
}

/// An observed answer must arrive as plain bytes: a `Content-Encoding` other than `identity`
/// (or a transfer coding other than `chunked`) would hide `usage` and defeat the rewrites, so
/// it is refused (502) rather than passed on unaccounted. Answers without a body pass.
pub fn check_encoding(routed: &Routed, resp: &ResponseHeader) -> Result<()> {
    let status = resp.status.as_u16();
    if !observed(routed) || status == 204 || status == 304 || resp.status.is_informational() {
        return Ok(());
    }
    let coded = |name: http::header::HeaderName, plain: &[&str]| {
        resp.headers.get_all(name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return true };
            v.split(',').map(str::trim).any(|c| !c.is_empty() && !plain.iter().any(|p| c.eq_ignore_ascii_case(p)))
        })
    };
    if coded(http::header::CONTENT_ENCODING, &["identity"]) || coded(http::header::TRANSFER_ENCODING, &["chunked"]) {
        return Error::e_explain(ENCODED_ANSWER, "the upstream compressed an answer the gateway must read");
    }
    Ok(())
}
