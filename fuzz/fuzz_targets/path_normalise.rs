//! The request path normaliser (`http_path::normalise`), on any text.
//!
//! Properties: it never panics; what it accepts comes out absolute, with no `.` or `..`
//! segment and no empty segment inside the path (the query, if kept, is not inspected), and
//! normalising that output again gives it back unchanged (idempotence: the gateway decides
//! on the same path the upstream receives).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::http_path::normalise;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(out) = normalise(raw) else { return };
    let path = out.split('?').next().unwrap_or("");
    assert!(path.starts_with('/'), "{raw:?} normalised to a relative path {out:?}");
    let inner = path.trim_start_matches('/');
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        for seg in inner.split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "{raw:?} normalised to {out:?} with segment {seg:?}");
        }
    }
    match normalise(&out) {
        Ok(again) => assert_eq!(again, out, "not idempotent on {raw:?}"),
        Err(_) => panic!("{raw:?} normalised to {out:?}, which is then refused"),
    }
});
