//! The request body scanner (`request_body::scan`: model, stream flag, user) and the
//! multipart form reader (`request_body::multipart_model`), on any bytes. Enabled at merge:
//! see fuzz/Cargo.toml.
//!
//! Input: one byte giving the multipart boundary's length, the boundary, then the body.
//! Properties: neither panics, and the scanner is deterministic about refusing (the same
//! bytes are accepted or refused alike every time). Only the signatures are assumed, so the
//! checks ask for no trait beyond what `Result` gives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::request_body::{multipart_model, scan};

fuzz_target!(|data: &[u8]| {
    assert_eq!(scan(data).is_ok(), scan(data).is_ok(), "scan is not deterministic");

    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 72).min(rest.len());
    let (boundary, body) = rest.split_at(n);
    let Ok(boundary) = std::str::from_utf8(boundary) else { return };
    let _ = multipart_model(body, boundary);
});
