//! The request body scanner (`request_body::scan`: model, stream flag, user) and the
//! multipart form reader (`request_body::multipart_model`), on any bytes.
//!
//! Input: one byte giving the multipart boundary's length, the boundary, then the body.
//! Properties:
//! - neither panics, and the scanner decides the same way every time;
//! - the model the scanner accepts is the model a JSON parser on the upstream reads: when
//!   `scan` accepts a body, serde_json parses it as an object whose `model` is the same string
//!   (or absent / null / empty when the scan says none). This is the fail-closed rule: the
//!   gateway never checks one model while the upstream uses another.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::request_body::{multipart_model, scan};

fuzz_target!(|data: &[u8]| {
    let first = scan(data);
    assert_eq!(first, scan(data), "scan is not deterministic");
    if let Ok(found) = first {
        if !data.iter().all(u8::is_ascii_whitespace) {
            let v: serde_json::Value = match serde_json::from_slice(data) {
                Ok(v) => v,
                // A number past f64's range (`1e999`): serde_json refuses it, Python's parser
                // (vLLM) reads it as infinity; either way it is not the model. Found by this
                // target in its first long run.
                Err(e) if e.to_string().starts_with("number out of range") => return,
                Err(e) => panic!("scan accepted what serde_json refuses: {e}"),
            };
            let upstream = v.get("model").and_then(|m| m.as_str()).filter(|m| !m.is_empty());
            if let Some(m) = v.get("model") {
                assert!(m.is_null() || m.is_string(), "scan accepted a non-string model {m}");
            }
            assert_eq!(found.model.as_deref(), upstream, "scan and the upstream disagree on the model");
        }
    }

    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 72).min(rest.len());
    let (boundary, body) = rest.split_at(n);
    let Ok(boundary) = std::str::from_utf8(boundary) else { return };
    let _ = multipart_model(body, &format!("multipart/form-data; boundary={boundary}"));
});
