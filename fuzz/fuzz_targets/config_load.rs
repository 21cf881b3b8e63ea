//! The configuration loader on any YAML text, with a fixed environment.
//!
//! Properties: loading never panics; it is deterministic; a failure lists at least one
//! problem and every problem says something; and a provider `api_key` (here the value of
//! `${FUZZ_SECRET}`) never shows in an error message or in the compiled runtime's `Debug`
//! output, unless the same text also appears somewhere that is not an `api_key`.
//!
//! The loader resolves upstream host names and reads TLS files named in the YAML. So that a
//! fuzz run sends no DNS query and opens no fuzz-chosen path (`/dev/zero` would hang it),
//! inputs whose providers name a host that is not an IP literal, or that name a TLS file, are
//! skipped; the guard deserialises exactly what the loader deserialises, so it sees the same
//! hosts. Resolution and PEM files are covered by the unit and integration tests.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcas::config::{expand, load_str, schema::BackendSection, schema::FileConfig};
use serde_yaml::Value;
use std::net::IpAddr;

const SECRET: &str = "sk-fuzz-7f3a9c2e51d8b6";

fn env(name: &str) -> Option<String> {
    match name {
        "FUZZ_SECRET" => Some(SECRET.to_string()),
        "FUZZ_HOST" => Some("127.0.0.1".to_string()),
        "FUZZ_PORT" => Some("8000".to_string()),
        "FUZZ_KEY" => Some("ab".repeat(32)),
        _ => None,
    }
}

fn ip_literal(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
}

/// The file as the loader will see it, when it gets that far.
fn parsed(text: &str) -> Option<(Value, FileConfig)> {
    if text.trim().is_empty() {
        return None;
    }
    let mut tree: Value = serde_yaml::from_str(text).ok()?;
    let mut errors = Vec::new();
    expand::expand_tree(&mut tree, "", &env, &mut errors);
    let file: FileConfig = serde_yaml::from_value(tree.clone()).ok()?;
    Some((tree, file))
}

/// No DNS and no file: every host an IP literal, no TLS file.
fn offline(file: &FileConfig) -> bool {
    if file.server.tls.is_some() {
        return false;
    }
    file.providers.iter().all(|p| {
        let url_ok = match url::Url::parse(&p.url) {
            Ok(u) => u.host_str().is_none_or(ip_literal),
            Err(_) => true,
        };
        let backends_ok = p.backends.iter().flatten().all(|b| {
            let addr = match b {
                BackendSection::Address(a) => a,
                BackendSection::Weighted(w) => &w.address,
            };
            match addr.rsplit_once(':') {
                Some((h, port)) if port.parse::<u16>().is_ok() => ip_literal(h),
                _ => true,
            }
        });
        url_ok && backends_ok && p.tls.ca_file.is_none()
    })
}

/// How often the secret occurs in the tree's text (keys, values and tags).
fn occurrences(v: &Value) -> usize {
    match v {
        Value::String(s) => s.matches(SECRET).count(),
        Value::Sequence(items) => items.iter().map(occurrences).sum(),
        Value::Mapping(m) => m.iter().map(|(k, v)| occurrences(k) + occurrences(v)).sum(),
        Value::Tagged(t) => t.tag.to_string().matches(SECRET).count() + occurrences(&t.value),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parsed(text);
    if let Some((_, file)) = &parsed {
        if !offline(file) {
            return;
        }
    }
    let first = load_str(text, &env);
    let second = load_str(text, &env);
    let shown = match &first {
        Ok(rt) => format!("{rt:?}"),
        Err(errs) => {
            assert!(!errs.0.is_empty(), "a failed load names no problem");
            for e in &errs.0 {
                assert!(!e.message.trim().is_empty(), "an error without a message at {:?}", e.path);
            }
            errs.to_string()
        }
    };
    match (&first, &second) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "the same text gave different errors"),
        _ => panic!("the same text loaded once and failed once"),
    }
    if let Some((tree, file)) = &parsed {
        let in_keys: usize =
            file.providers.iter().filter_map(|p| p.api_key.as_deref()).map(|k| k.matches(SECRET).count()).sum();
        if in_keys > 0 && occurrences(tree) == in_keys {
            assert!(!shown.contains(SECRET), "a provider api_key leaked: {shown}");
        }
    }
});
