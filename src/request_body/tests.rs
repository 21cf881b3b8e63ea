use super::*;

fn model(body: &str) -> Result<Option<String>, ScanError> {
    scan(body.as_bytes()).map(|s| s.model)
}

#[test]
fn reads_what_the_gateway_needs() {
    let s = scan(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true,"stream_options":{"include_usage":false},"user":"u1"}"#).unwrap();
    assert_eq!(s.model.as_deref(), Some("m"));
    assert_eq!(s.stream, Some(true));
    assert_eq!(s.include_usage, Some(false));
    assert_eq!(s.user.as_deref(), Some("u1"));
    assert!(s.prefix(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true,"stream_options":{"include_usage":false},"user":"u1"}"#).is_some());
    assert_eq!(scan(br#"{"user":42}"#).unwrap().user.as_deref(), Some("42"));
    assert_eq!(scan(b"").unwrap(), Scan::default());
    assert_eq!(scan(b"  \r\n").unwrap(), Scan::default());
    assert_eq!(model(r#"{"model":"mod\u0065l-x"}"#).unwrap().as_deref(), Some("model-x"));
}

#[test]
fn prefix_fingerprint_follows_the_conversation_start() {
    let turn1 = r#"{"model":"m","user":"u1","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
    let turn2 = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}],"model":"m"}"#;
    let other = r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"bye"}]}"#;
    let f = |b: &str| scan(b.as_bytes()).unwrap().prefix(b.as_bytes());
    assert_eq!(f(turn1), f(turn2));
    assert_ne!(f(turn1), f(other));
    assert!(f(r#"{"model":"m","prompt":"x"}"#).is_none());
    assert!(f(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true}"#).is_some());
}

#[test]
fn absent_null_and_empty_models_are_no_model() {
    assert_eq!(model(r#"{"messages":[]}"#).unwrap(), None);
    assert_eq!(model(r#"{"model":null}"#).unwrap(), None);
    assert_eq!(model(r#"{"model":""}"#).unwrap(), None);
}

#[test]
fn doubtful_bodies_are_refused() {
    assert_eq!(model(r#"{"model":"a","model":"b"}"#), Err(ScanError::DuplicateKey("model".into())));
    assert_eq!(model(r#"{"model":"a","Model":"b"}"#), Err(ScanError::DuplicateKey("Model".into())));
    assert_eq!(model(r#"{"MODEL":"b"}"#), Err(ScanError::ModelSpelling("MODEL".into())));
    assert_eq!(model(r#"{"model":"a","mod\u0065l":"b"}"#), Err(ScanError::DuplicateKey("model".into())));
    assert!(matches!(model(r#"{"stream":true,"stream":false,"model":"a"}"#), Err(ScanError::DuplicateKey(_))));
    assert_eq!(model("[1,2]"), Err(ScanError::NotJson));
    assert_eq!(model("model=a"), Err(ScanError::NotJson));
    assert_eq!(model("\u{feff}{}"), Err(ScanError::NotJson));
    assert!(matches!(model(r#"{"model":5}"#), Err(ScanError::Invalid(_))));
    assert!(matches!(model(r#"{"model":"a"} x"#), Err(ScanError::Invalid(_))));
    assert!(matches!(model(r#"{"model":"a","x":NaN}"#), Err(ScanError::Invalid(_))));
    assert_eq!(scan(b"{\"model\":\"a\xff\"}"), Err(ScanError::InvalidUtf8));
    // UTF-16: Python's json.loads would read it; here it is not JSON.
    let utf16: Vec<u8> = r#"{"model":"b"}"#.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    assert!(scan(&utf16).is_err());
}

#[test]
fn deep_nesting_and_long_numbers_are_refused_without_a_crash() {
    let deep = format!(r#"{{"model":"a","x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(scan(deep.as_bytes()), Err(ScanError::TooDeep));
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    assert_eq!(scan(deep_obj.as_bytes()), Err(ScanError::TooDeep));
    let ok = format!(r#"{{"model":"a","x":{}{}}}"#, "[".repeat(100), "]".repeat(100));
    assert_eq!(model(&ok).unwrap().as_deref(), Some("a"));
    let big = format!(r#"{{"model":"a","seed":{}}}"#, "9".repeat(10_000));
    assert_eq!(scan(big.as_bytes()), Err(ScanError::NumberTooLong));
    // Brackets and digits inside strings do not count.
    let s = format!(r#"{{"model":"a","x":"{}{}\"\\"}}"#, "[".repeat(1000), "1".repeat(1000));
    assert_eq!(model(&s).unwrap().as_deref(), Some("a"));
}

#[test]
fn never_panics_on_odd_bytes() {
    for b in [&b"{"[..], b"{\"", b"{\"a\\", b"{\"model\":\"\\u12", b"{]", b"{\"a\":[}"] {
        assert!(scan(b).is_err(), "{b:?}");
    }
}

const CT: &str = "multipart/form-data; boundary=XyZ";

fn form(parts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (headers, value) in parts {
        out.push_str(&format!("--XyZ\r\n{headers}\r\n\r\n{value}\r\n"));
    }
    out.push_str("--XyZ--\r\n");
    out
}

#[test]
fn multipart_model_field() {
    let body = form(&[
        ("Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav", "RIFF\0\0"),
        ("Content-Disposition: form-data; name=\"model\"", "whisper-1"),
    ]);
    assert_eq!(multipart_model(body.as_bytes(), CT).unwrap().as_deref(), Some("whisper-1"));
    let quoted = "multipart/form-data; charset=utf-8; boundary=\"XyZ\"";
    assert_eq!(multipart_model(body.as_bytes(), quoted).unwrap().as_deref(), Some("whisper-1"));
    let unquoted = form(&[("content-disposition: form-data; name=model", "w")]);
    assert_eq!(multipart_model(unquoted.as_bytes(), CT).unwrap().as_deref(), Some("w"));
    let none = form(&[("Content-Disposition: form-data; name=\"purpose\"", "x")]);
    assert_eq!(multipart_model(none.as_bytes(), CT).unwrap(), None);
    assert_eq!(multipart_model(b"--XyZ--", CT).unwrap(), None);
    let offset = close_offset(body.as_bytes(), b"XyZ").unwrap();
    assert!(body[offset..].starts_with("--XyZ--"));
}

#[test]
fn doubtful_forms_are_refused() {
    let bad = |body: String, why: &str| assert!(multipart_model(body.as_bytes(), CT).is_err(), "{why}: {body:?}");
    let m = "Content-Disposition: form-data; name=\"model\"";
    bad(form(&[(m, "a"), (m, "b")]), "twice");
    bad(form(&[("Content-Disposition: form-data; name=\"Model\"", "b")]), "case");
    bad(form(&[("Content-Disposition: form-data; name*=utf-8''model", "b")]), "rfc 2231");
    bad(form(&[("Content-Disposition: form-data; name=\"x\"; name=\"model\"", "b")]), "named twice");
    bad(form(&[(&format!("{m}\r\nContent-Transfer-Encoding: base64"), "YQ==")]), "base64");
    bad(form(&[(&format!("{m}\r\nContent-Type: text/plain; charset=utf-16"), "b")]), "charset");
    bad(form(&[(&format!("{m}; filename=\"m.txt\""), "b")]), "file");
    bad(form(&[(&format!("{m}\r\n Content-Type: x"), "b")]), "folded");
    bad(form(&[(m, "a\0b")]), "control");
    bad(form(&[("X-Other: 1", "b")]), "no disposition");
    bad(format!("preamble\r\n{}", form(&[(m, "a")])), "preamble");
    bad(form(&[(m, "a\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb")]), "bare LF delimiter");
    bad(form(&[(m, "a")]).replace("--XyZ--\r\n", ""), "no close");
    bad(format!("{}--XyZ\r\n{m}\r\n\r\nb\r\n", form(&[(m, "a")])), "after close");
    for ct in [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=XyZ",
        "multipart/form-data; boundary=XyZ; boundary=Q",
        "multipart/form-data; boundary=XyZ; charset=utf-16",
        "multipart/form-data; boundary=\"XyZ",
    ] {
        assert!(multipart_model(form(&[(m, "a")]).as_bytes(), ct).is_err(), "{ct}");
    }
}

#[test]
fn multipart_never_panics_on_odd_bytes() {
    for b in [
        &b""[..],
        b"--XyZ",
        b"--XyZ\r\n",
        b"--XyZ\r\n\r\n",
        b"--XyZ\r\n--XyZ--",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n--XyZ--",
        b"\r\n--XyZ--",
    ] {
        let _ = multipart_model(b, CT);
    }
}

/// Random inputs built from the bytes that matter to the parsers: no panic, ever.
#[test]
fn random_inputs_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let json_alphabet: &[u8] = b"{}[]\":,\\ \t\r\n0123456789-+.eEtruefalsnmodelMODEL\xff\xc3\xa9\x00u";
    let form_alphabet: &[u8] = b"-XyZ\r\n:;=\" \\Content-Disposition form-data name model filename*\xff\x00";
    for _ in 0..5_000 {
        let len = rng.gen_range(0..64);
        let json: Vec<u8> = (0..len).map(|_| json_alphabet[rng.gen_range(0..json_alphabet.len())]).collect();
        let _ = scan(&json);
        let mut form = b"--XyZ\r\n".to_vec();
        form.extend((0..len).map(|_| form_alphabet[rng.gen_range(0..form_alphabet.len())]));
        let _ = multipart_model(&form, CT);
        let _ = multipart_model(&json, CT);
        let ct = String::from_utf8_lossy(&form[7..]).to_string();
        let _ = multipart_model(&form, &format!("multipart/form-data; boundary={ct}"));
    }
}
