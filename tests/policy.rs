//! Issue 10, "fail closed": model permissions that no dressing of the request gets around.
//! Each test sends what a client may send and proves, with a capture upstream, what reached
//! the upstream: content types and charsets, missing models and `default_model`, the model
//! list in every path spelling, `/models/{id}`, an unreadable list, path traversal and
//! encoded separators, the WebSocket query key in any spelling, and JSON edge cases.

mod capture;
mod endpoints;

use crate::common::gateway::{spawn_gateway, Gw};
use capture::{Capture, Seen};
use serde_json::Value;
use std::time::Duration;

const RESTRICTED: &str = "k-restricted-0123456789";
const ALL: &str = "k-all-0123456789";

async fn setup() -> (Capture, Gw) {
    let cap = Capture::start().await;
    let url = format!("http://{}", cap.addr);
    let rest = format!(
        "keys:\n  - {{ name: restricted, key: \"{RESTRICTED}\", models: [\"allowed-*\"] }}\n  - {{ name: all, key: \"{ALL}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: cap, url: \"{url}\", models: [\"*\"] }}\n  - {{ name: capd, url: \"{url}\", models: [\"*\"], default_model: allowed-p }}\n\
         routes:\n  - {{ path: \"/v1/*\", provider: by_model, websocket: true }}\n\
         \x20 - {{ path: \"/d/v1/*\", provider: cap, strip_prefix: \"/d\", default_model: allowed-default, websocket: true }}\n\
         \x20 - {{ path: \"/s/v1/*\", provider: cap, strip_prefix: \"/s\", default_model: secret-default }}\n\
         \x20 - {{ path: \"/p/v1/*\", provider: capd, strip_prefix: \"/p\" }}\n"
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    (cap, gw)
}

/// A raw HTTP/1.1 request (nothing normalised on the way, unlike a URL library).
fn request(method: &str, target: &str, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `req` and reads one answer: (status, body).
async fn send(gw: &Gw, req: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(done) = parse(&got) {
            return done;
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    parse(&got).unwrap_or_else(|| panic!("no whole answer: {}", String::from_utf8_lossy(&got)))
}

/// A complete response in `raw` (Content-Length or chunked), if there is one yet.
fn parse(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let rest = &raw[end + 4..];
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    if let Some(len) = header("content-length:") {
        let len: usize = len.parse().ok()?;
        return (rest.len() >= len).then(|| (status, String::from_utf8_lossy(&rest[..len]).into_owned()));
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let (mut body, mut at) = (Vec::new(), 0);
        loop {
            let eol = rest[at..].windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[at..at + eol]).trim(), 16).ok()?;
            at += eol + 2;
            if size == 0 {
                return Some((status, String::from_utf8_lossy(&body).into_owned()));
            }
            body.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
    }
    Some((status, String::from_utf8_lossy(rest).into_owned()))
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not an OpenAI error: {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {body}")).to_string()
}

fn chat(model: &str) -> Vec<u8> {
    format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}"}}"#).into_bytes()
}

fn assert_nothing_forwarded(cap: &Capture, what: &str) {
    let seen = cap.take();
    assert!(seen.is_empty(), "{what}: reached the upstream: {:?}", seen.iter().map(Seen::text).collect::<Vec<_>>());
}

/// `forbidden` is refused with 403 `model_not_allowed` and nothing reaches the upstream; the
/// same request with `allowed` goes through, its body as it came. Returns what arrived.
async fn refused_then_passed(
    cap: &Capture,
    gw: &Gw,
    path: &str,
    headers: &[(&str, &str)],
    forbidden: &[u8],
    allowed: &[u8],
) -> Seen {
    let what = format!("{path} {headers:?}");
    let (status, body) = send(gw, &request("POST", path, RESTRICTED, headers, forbidden)).await;
    assert_eq!((status, code(&body).as_str()), (403, "model_not_allowed"), "{what}");
    assert_nothing_forwarded(cap, &what);
    let (status, body) = send(gw, &request("POST", path, RESTRICTED, headers, allowed)).await;
    assert_eq!(status, 200, "{what}: {body}");
    let mut seen = cap.take();
    assert_eq!(seen.len(), 1, "{what}");
    assert_eq!(seen[0].body, allowed, "{what}: the body was changed");
    seen.remove(0)
}

#[tokio::test]
async fn content_types_cannot_smuggle_a_forbidden_model() {
    let (cap, gw) = setup().await;
    let path = "/v1/chat/completions";
    for ct in [
        Some("application/octet-stream"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
        Some("application/json; charset=utf-16"),
        Some("APPLICATION/JSON"),
        Some("application/vnd.api+json"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        refused_then_passed(&cap, &gw, path, &headers, &chat("secret-b"), &chat("allowed-a")).await;
    }
    // Not JSON at all, on a route that needs the model: 415, whatever the key.
    for key in [RESTRICTED, ALL] {
        let octet = [("content-type", "application/octet-stream")];
        let (status, body) = send(&gw, &request("POST", path, key, &octet, b"model=secret-b")).await;
        assert_eq!((status, code(&body).as_str()), (415, "unsupported_media_type"));
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let (status, _) = send(&gw, &request("POST", path, key, &form, b"model=secret-b&prompt=x")).await;
        assert_eq!(status, 415);
    }
    // Two Content-Type headers: which one an upstream believes is not for the gateway to guess.
    let two = [("content-type", "application/json"), ("content-type", "multipart/form-data; boundary=x")];
    let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &two, &chat("allowed-a"))).await;
    assert_eq!(status, 400);
    // A compressed body cannot be read: refused, not forwarded.
    let gz = [("content-type", "application/json"), ("content-encoding", "gzip")];
    let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &gz, b"\x1f\x8b\x08\x00garbage")).await;
    assert_eq!(status, 415);
    // JSON sent as multipart/form-data is not a form: 400.
    let mp = [("content-type", "multipart/form-data; boundary=x")];
    let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &mp, &chat("secret-b"))).await;
    assert_eq!(status, 400);
    // A model in the query is checked too, and may not disagree with the body.
    let (status, _) =
        send(&gw, &request("POST", &format!("{path}?model=secret-b"), RESTRICTED, &[], &chat("allowed-a"))).await;
    assert_eq!(status, 400);
    let (status, body) = send(&gw, &request("POST", "/v1/embeddings?model=secret-b", RESTRICTED, &[], b"{}")).await;
    assert_eq!((status, code(&body).as_str()), (403, "model_not_allowed"));
    assert_nothing_forwarded(&cap, "415/400 cases");
}

#[tokio::test]
async fn a_missing_model_needs_a_default_the_key_may_use() {
    let (cap, gw) = setup().await;
    let no_model = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    for body in [&no_model[..], br#"{"model":null,"prompt":"x"}"#, br#"{"model":"","prompt":"x"}"#, b""] {
        let (status, answer) = send(&gw, &request("POST", "/v1/chat/completions", RESTRICTED, &[], body)).await;
        assert_eq!((status, code(&answer).as_str()), (400, "model_required"), "{}", String::from_utf8_lossy(body));
    }
    // The route's default is not one the key may use.
    let (status, answer) = send(&gw, &request("POST", "/s/v1/chat/completions", RESTRICTED, &[], no_model)).await;
    assert_eq!((status, code(&answer).as_str()), (400, "model_required"));
    assert_nothing_forwarded(&cap, "no model");
    // A key allowed every model may leave it out: the body goes as it came.
    let (status, _) = send(&gw, &request("POST", "/v1/chat/completions", ALL, &[], no_model)).await;
    assert_eq!(status, 200);
    assert_eq!(cap.take()[0].body, no_model);
    // The route's default (and the provider's) is what is checked, charged and sent upstream.
    for (path, model) in [("/d/v1/chat/completions", "allowed-default"), ("/p/v1/chat/completions", "allowed-p")] {
        let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &[], no_model)).await;
        assert_eq!(status, 200, "{path}");
        let seen = cap.take();
        assert_eq!(seen[0].target, "/v1/chat/completions");
        assert_eq!(seen[0].json()["model"], model, "{path}");
        assert_eq!(seen[0].json()["messages"][0]["content"], "hi");
    }
    // A named model is never replaced by the default.
    let (status, _) = send(&gw, &request("POST", "/d/v1/chat/completions", RESTRICTED, &[], &chat("allowed-x"))).await;
    assert_eq!(status, 200);
    assert_eq!(cap.take()[0].body, chat("allowed-x"));
}

#[tokio::test]
async fn json_edge_cases_are_refused_without_a_crash() {
    let (cap, gw) = setup().await;
    let deep = format!(r#"{{"model":"allowed-a","x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let long_number = format!(r#"{{"model":"allowed-a","seed":{}}}"#, "9".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"model\":\"allowed-a\",\"x\":\"\xff\xfe\"}".to_vec()),
        ("100,000-deep nesting", deep.into_bytes()),
        ("10,000-digit number", long_number.into_bytes()),
        ("duplicate model", br#"{"model":"allowed-a","model":"secret-b"}"#.to_vec()),
        ("duplicate model, other order", br#"{"model":"secret-b","model":"allowed-a"}"#.to_vec()),
        ("escaped duplicate", br#"{"model":"allowed-a","mod\u0065l":"secret-b"}"#.to_vec()),
        ("Model for Go upstreams", br#"{"model":"allowed-a","Model":"secret-b"}"#.to_vec()),
        ("Model alone", br#"{"Model":"allowed-a"}"#.to_vec()),
        ("array body", br#"["allowed-a"]"#.to_vec()),
        ("model not a string", br#"{"model":["secret-b"]}"#.to_vec()),
        ("trailing data", br#"{"model":"allowed-a"}{"model":"secret-b"}"#.to_vec()),
        ("NaN", br#"{"model":"allowed-a","temperature":NaN}"#.to_vec()),
        ("BOM", b"\xef\xbb\xbf{\"model\":\"allowed-a\"}".to_vec()),
        ("UTF-16", r#"{"model":"secret-b"}"#.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()),
    ];
    let json = [("content-type", "application/json")];
    for (what, body) in &cases {
        let (status, answer) = send(&gw, &request("POST", "/v1/chat/completions", RESTRICTED, &json, body)).await;
        assert_eq!(status, 400, "{what}: {answer}");
        code(&answer);
    }
    assert_nothing_forwarded(&cap, "edge cases");
    // Still serving.
    let (status, _) = send(&gw, &request("POST", "/v1/chat/completions", RESTRICTED, &json, &chat("allowed-a"))).await;
    assert_eq!(status, 200);
}

fn form(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        let filename = if *name == "file" { "; filename=\"a.wav\"\r\nContent-Type: audio/wav" } else { "" };
        out.extend_from_slice(
            format!("--bNd\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--bNd--\r\n");
    out
}

#[tokio::test]
async fn multipart_model_fields_are_checked() {
    let (cap, gw) = setup().await;
    let ct = [("content-type", "multipart/form-data; boundary=bNd")];
    let audio: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect(); // over 64 KiB
    let path = "/v1/audio/transcriptions";
    let (status, answer) =
        send(&gw, &request("POST", path, RESTRICTED, &ct, &form(&[("file", &audio), ("model", b"secret-b")]))).await;
    assert_eq!((status, code(&answer).as_str()), (403, "model_not_allowed"));
    for (what, body) in [
        ("no model", form(&[("file", &audio)])),
        ("twice", form(&[("model", b"allowed-a"), ("file", &audio), ("model", b"secret-b")])),
        ("Model", form(&[("Model", b"secret-b"), ("file", &audio)])),
    ] {
        let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &ct, &body)).await;
        assert_eq!(status, 400, "{what}");
    }
    let translations = form(&[("model", b"secret-b"), ("file", b"x")]);
    let (status, _) = send(&gw, &request("POST", "/v1/audio/translations", RESTRICTED, &ct, &translations)).await;
    assert_eq!(status, 403);
    assert_nothing_forwarded(&cap, "forbidden forms");
    // An allowed upload over 64 KiB arrives byte for byte.
    let body = form(&[("file", &audio), ("model", b"allowed-a"), ("language", b"en")]);
    let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &ct, &body)).await;
    assert_eq!(status, 200);
    let seen = cap.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body == body, "the upload changed on the way ({} bytes arrived)", seen[0].body.len());
    // An upload by a key allowed every model, on a route that needs no model, streams through
    // unread (as before: an upload is not bounded by server.max_body there).
    let odd = b"--bNd\r\nnot really a form";
    let (status, _) = send(&gw, &request("POST", "/d/v1/files", ALL, &ct, odd)).await;
    assert_eq!(status, 200);
    assert_eq!(cap.take()[0].body, odd);
    // No model on a route with a default: the default joins the form.
    let (status, _) =
        send(&gw, &request("POST", "/d/v1/audio/transcriptions", RESTRICTED, &ct, &form(&[("file", &audio)]))).await;
    assert_eq!(status, 200);
    let seen = cap.take();
    let model = mcas::request_body::multipart_model(&seen[0].body, ct[0].1).unwrap();
    assert_eq!(model.as_deref(), Some("allowed-default"));
}

fn ids(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not a list: {body}"));
    v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_model_list_is_filtered_in_every_spelling() {
    let (cap, gw) = setup().await;
    for path in [
        "/v1/models",
        "/v1/models/",
        "/v1//models",
        "//v1/models",
        "/v1/%6dodels",
        "/v1/%6Dodels/",
        "/v1/./models",
        "/v1/x/../models",
        "/v1/models?limit=10",
        "/v1/models/?x=1",
        "/v1/models//",
    ] {
        let (status, body) = send(&gw, &request("GET", path, RESTRICTED, &[("accept-encoding", "gzip")], b"")).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(ids(&body), ["allowed-a", "allowed-c"], "{path}");
        let seen = cap.take();
        assert_eq!(seen.len(), 1, "{path}");
        let target = seen[0].target.split('?').next().unwrap().to_string();
        assert!(target == "/v1/models" || target == "/v1/models/", "{path} reached the upstream as {target}");
    }
    // `;` path parameters (which Java servers strip): filtered too; this upstream's answer
    // there is no list, so it is refused rather than passed on.
    let (status, body) = send(&gw, &request("GET", "/v1/models;x=1", RESTRICTED, &[], b"")).await;
    assert_eq!(status, 502, "{body}");
    cap.take();
    // An event stream or upgrade cannot carry the list past the filter.
    let (status, body) =
        send(&gw, &request("GET", "/v1/models", RESTRICTED, &[("accept", "text/event-stream")], b"")).await;
    assert_eq!((status, ids(&body).len()), (200, 2));
    cap.take();
    // The key allowed every model sees every model.
    let (_, body) = send(&gw, &request("GET", "/v1/models/", ALL, &[], b"")).await;
    assert_eq!(ids(&body).len(), 4);
    cap.take();
    // One model: 404 outside the key's globs, in any spelling; forwarded inside them.
    for path in
        ["/v1/models/secret-b", "/v1/models/secret%2Db", "/v1//models/secret-b/", "/v1/models/allowed-a/../secret-b"]
    {
        let (status, body) = send(&gw, &request("GET", path, RESTRICTED, &[], b"")).await;
        assert_eq!((status, code(&body).as_str()), (404, "model_not_found"), "{path}");
    }
    let (status, body) = send(&gw, &request("DELETE", "/v1/models/secret-b", RESTRICTED, &[], b"")).await;
    assert_eq!((status, code(&body).as_str()), (404, "model_not_found"));
    assert_nothing_forwarded(&cap, "/models/secret-b");
    let (status, _) = send(&gw, &request("GET", "/v1/models/allowed-a", RESTRICTED, &[], b"")).await;
    assert_eq!(status, 200);
    assert_eq!(cap.take()[0].target, "/v1/models/allowed-a");
}

#[tokio::test]
async fn an_unreadable_model_list_is_a_502() {
    let (cap, gw) = setup().await;
    for list in ["not json", r#"{"data":{"id":"secret-b"}}"#, r#"[{"id":"secret-b"}]"#, ""] {
        cap.serve_models(list);
        let (status, body) = send(&gw, &request("GET", "/v1/models", RESTRICTED, &[], b"")).await;
        assert_eq!((status, code(&body).as_str()), (502, "bad_gateway"), "{list}");
        assert!(!body.contains("secret-b"), "{body}");
    }
    cap.serve_models(&format!(
        r#"{{"object":"list","data":[{{"id":"allowed-a","pad":"{}"}},{{"id":"secret-b"}}]}}"#,
        "x".repeat(5 << 20)
    ));
    let (status, body) = send(&gw, &request("GET", "/v1/models", RESTRICTED, &[], b"")).await;
    assert_eq!(status, 502, "a list too large to filter: {}", &body[..body.len().min(200)]);
}

#[tokio::test]
async fn paths_are_canonical_or_refused() {
    let (cap, gw) = setup().await;
    // Matched and forwarded as one canonical path.
    for (path, upstream) in [
        ("/v1/chat/../chat/completions", "/v1/chat/completions"),
        ("/v1//chat/%63ompletions", "/v1/chat/completions"),
        ("/s/../d/v1/./chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions?x=%2F", "/v1/chat/completions?x=%2F"),
    ] {
        let (status, body) = send(&gw, &request("POST", path, RESTRICTED, &[], &chat("allowed-a"))).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(cap.take()[0].target, upstream, "{path}");
    }
    // Cannot be made canonical without guessing: 400, never forwarded.
    for path in [
        "/v1/chat%2Fcompletions",
        "/v1/..%2F..%2Fadmin",
        "/v1/a%5Cb",
        "/../v1/models",
        "/v1/../../etc",
        "/v1/%2e%2e/%2e%2e/x",
        "/v1/a%zz",
        "/v1/a%00",
    ] {
        let (status, body) = send(&gw, &request("POST", path, ALL, &[], &chat("allowed-a"))).await;
        assert_eq!(status, 400, "{path}: {body}");
        code(&body);
    }
    assert_nothing_forwarded(&cap, "bad paths");
}

#[tokio::test]
async fn a_websocket_query_key_is_scrubbed_in_every_spelling() {
    let (cap, gw) = setup().await;
    let upgrade = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for name in ["api_key", "api%5Fkey", "api%5fkey", "%61pi_key", "%61%70%69%5f%6b%65%79"] {
        let target = format!("/v1/ws?x=1&{name}={ALL}&y=2");
        let mut req = format!("GET {target} HTTP/1.1\r\nhost: gw\r\n");
        for (k, v) in upgrade {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let (status, _) = send(&gw, req.as_bytes()).await;
        assert_ne!(status, 401, "{name} did not authenticate");
        let seen = cap.take();
        assert_eq!(seen.len(), 1, "{name}");
        assert!(!seen[0].text().contains(ALL), "{name}: the key reached the upstream: {}", seen[0].text());
        assert_eq!(seen[0].target, "/v1/ws?x=1&y=2", "{name}");
    }
    // A key that may use only some models must name one the upgrade may use (in the query).
    let ws = |target: &str| {
        let mut req = format!("GET {target} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {RESTRICTED}\r\n");
        for (k, v) in upgrade {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req + "\r\n"
    };
    let (status, body) = send(&gw, ws("/v1/ws").as_bytes()).await;
    assert_eq!((status, code(&body).as_str()), (400, "model_required"));
    let (status, _) = send(&gw, ws("/v1/ws?model=secret-b").as_bytes()).await;
    assert_eq!(status, 403);
    assert_nothing_forwarded(&cap, "restricted upgrades");
    let (status, _) = send(&gw, ws("/v1/ws?model=allowed-a").as_bytes()).await;
    assert_ne!(status, 403);
    assert_eq!(cap.take()[0].target, "/v1/ws?model=allowed-a");
    let (_, _) = send(&gw, ws("/d/v1/ws").as_bytes()).await;
    assert_eq!(cap.take()[0].target, "/v1/ws?model=allowed-default");
}

#[test]
fn the_key_model_label_cap_is_bounded_and_named() {
    use crate::common::gateway::check;
    let rest = "keys:\n  - { name: a, key: k, models: [\"*\"] }\nproviders:\n  - { name: p, url: \"http://127.0.0.1:9/v1\" }\n";
    let (code, out) = check(&format!("admin: {{ max_key_model_pairs: 100001 }}\n{rest}"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.max_key_model_pairs"), "{out}");
    let (code, out) = check(&format!("admin: {{ max_key_model_pairs: 0 }}\n{rest}"), &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_default_model_must_be_served_where_it_leads() {
    use crate::common::gateway::check;
    let base = "keys:\n  - { name: a, key: k, models: [\"*\"] }\nproviders:\n  - { name: p, url: \"http://127.0.0.1:9/v1\", models: [\"llama-*\"] ";
    let (code, out) = check(&format!("{base}, default_model: qwen }}\n"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("providers[0].default_model"), "{out}");
    let routes = "routes:\n  - { path: \"/v1/*\", provider: by_model, default_model: \"gpt-4\" }\n  - { path: \"/x/*\", provider: p, default_model: \"a\\\"b\" }\n";
    let (code, out) = check(&format!("{base}}}\n{routes}"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].default_model") && out.contains("routes[1].default_model"), "{out}");
    let (code, out) = check(&format!("{base}, default_model: llama-3 }}\nroutes:\n  - {{ path: \"/v1/*\", provider: by_model, default_model: llama-4 }}\n"), &[]);
    assert_eq!(code, 0, "{out}");
}
