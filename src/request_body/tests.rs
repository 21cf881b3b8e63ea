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

/// The one-pass reader and the serde reader give the same answer (the same `Scan` or the
/// same error) on `body`; `fast`: the one-pass reader must answer by itself.
fn same_both_ways(body: &[u8], fast: bool) {
    assert_eq!(scan(body), scan_with(body, false), "{:?}", String::from_utf8_lossy(body));
    if fast {
        let text = std::str::from_utf8(body).unwrap();
        let open = text.find('{').unwrap();
        assert!(super::fast::scan(text, open).is_some(), "not read in one pass: {text}");
    }
}

/// Bodies the one-pass reader reads by itself: the values extracted (model and user with
/// escapes decoded, spans, the first messages, limits) are serde's.
#[test]
fn one_pass_reads_as_serde_does() {
    let bodies = [
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"x"}],"model":"m","stream":true,"stream_options":{"include_usage":false},"user":"u1"}"#,
        r#" {"model":"mod\u0065l-x","user":"\ud83d\ude00 \"q\"\n"} "#,
        "{\"model\":\"caf\u{e9}\",\"user\":\"\u{1F600}\"}",
        r#"{"model":null,"user":null,"stream":null,"stream_options":null,"messages":null}"#,
        r#"{"model":"","stream":false,"stream_options":{},"messages":[]}"#,
        r#"{"stream_options":{"include_usage":null,"other":[1,{"a":"b"}]},"stream":true}"#,
        r#"{"stream_options":{"x":1,"include_usage":true}}"#,
        r#"{"user":42}"#,
        r#"{"user":{"id" : [1, 2.5e3, true]}}"#,
        r#"{"user":"a\u0000b"}"#,
        r#"{}"#,
        "{ \t\r\n}",
        r#"{"prompt":"once upon","max_tokens":16}"#,
        r#"{"prompt":["a","b"],"messages":[{"role":"user","content":"m"}]}"#,
        r#"{"messages":[{"role":"user","content":"m"}],"prompt":"p"}"#,
        r#"{"max_tokens":7,"max_completion_tokens":9}"#,
        r#"{"max_tokens":-1,"max_completion_tokens":1.0}"#,
        r#"{"max_tokens":18446744073709551615}"#,
        r#"{"max_tokens":18446744073709551616}"#,
        r#"{"max_tokens":1e2}"#,
        r#"{"max_tokens":-0}"#,
        r#"{"max_tokens":null,"max_completion_tokens":"5"}"#,
        r#"{"messages":[{"role":"developer","content":"d"},{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"}]}]}"#,
        r#"{"messages":[{"role":"user"},{"role":"user","content":null},{"role":"user","content":"late"}]}"#,
        r#"{"messages":[{"content":"no role"},{"role":null,"content":"x"},{"role":"tool","content":"y"}]}"#,
        r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},"anything",7,null,[]]}"#,
        r#"{"messages":[{"role":"user","content":"u","content_x":1,"Role":"system"}]}"#,
        r#"{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}],"temperature":0.7,"top_p":1,"n":1,"seed":-5,"logit_bias":{"50256":-100}}"#,
        r#"{"a":"\/\b\f\n\r\t\\\"\u00e9\uD83D\uDE00"}"#,
        r#"{"n":123456789012345678901234567890e-999}"#,
    ];
    for b in bodies {
        same_both_ways(b.as_bytes(), true);
    }
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(127), "]".repeat(127));
    same_both_ways(deep.as_bytes(), true);
    let long = format!(r#"{{"x":{}}}"#, "9".repeat(256));
    same_both_ways(long.as_bytes(), true);
    let many: String = (0..32).map(|k| format!(r#""k{k}":{k}"#)).collect::<Vec<_>>().join(",");
    same_both_ways(format!("{{{many}}}").as_bytes(), true);
}

/// Bodies refused, or read by serde only (escaped keys, odd shapes): the answer, error words
/// included, is the serde reader's.
#[test]
fn odd_bodies_are_answered_as_serde_does() {
    let bodies: [&[u8]; 52] = [
        br#"{"model":"a","model":"b"}"#,
        br#"{"model":"a","Model":"b"}"#,
        br#"{"MODEL":"a"}"#,
        br#"{"user":"a","USER":"b"}"#,
        br#"{"m\u006fdel":"a"}"#,
        br#"{"\u006dodel":"a","model":"b"}"#,
        br#"{"model":5}"#,
        br#"{"model":["a"]}"#,
        br#"{"model":"a"} x"#,
        br#"{"model":"a"}}"#,
        br#"{"model":"a",}"#,
        br#"{"model":"a" "x":1}"#,
        br#"{"model" "a"}"#,
        br#"{"model":"a","x":NaN}"#,
        br#"{"x":01}"#,
        br#"{"x":1.}"#,
        br#"{"x":-}"#,
        br#"{"x":+1}"#,
        br#"{"x":.5}"#,
        br#"{"x":tru}"#,
        br#"{"x":nulll}"#,
        br#"{"x":"\x"}"#,
        br#"{"x":"\u12"}"#,
        br#"{"x":"\ud800"}"#,
        br#"{"x":"\udc00\ud800"}"#,
        br#"{"user":"\ud800"}"#,
        br#"{"model":"\ud800"}"#,
        b"{\"x\":\"a\x01b\"}",
        b"{\"x\":\"a\nb\"}",
        b"{\"model\":\"a\xff\"}",
        b"{\"x\":1}\x0c",
        b"\x0c{\"x\":1}",
        b"{\"x\":1,\"y\":\"",
        b"{\"x\":[1,2",
        br#"{"stream":"yes"}"#,
        br#"{"stream":1}"#,
        br#"{"stream_options":[true]}"#,
        br#"{"stream_options":{"include_usage":1}}"#,
        br#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
        br#"{"stream_options":{"include\u005fusage":true}}"#,
        br#"{"stream_options":"x"}"#,
        br#"{"messages":{"role":"user"}}"#,
        br#"{"messages":["hi"]}"#,
        br#"{"messages":[null]}"#,
        br#"{"messages":[["user","hi"]]}"#,
        br#"{"messages":[{"role":"user","role":"system","content":"x"}]}"#,
        br#"{"messages":[{"role":"user","content":"x","content":"y"}]}"#,
        br#"{"messages":[{"role":5,"content":"x"}]}"#,
        br#"{"messages":[{"r\u006fle":"user","content":"x"}]}"#,
        br#"{"messages":[{"role":"us\u0065r","content":"x"}]}"#,
        br#"{"messages":"x"}"#,
        br#"[{"model":"a"}]"#,
    ];
    for b in bodies {
        same_both_ways(b, false);
    }
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(128), "]".repeat(128));
    assert_eq!(scan(deep.as_bytes()), Err(ScanError::TooDeep));
    let long = format!(r#"{{"x":{}}}"#, "9".repeat(257));
    assert_eq!(scan(long.as_bytes()), Err(ScanError::NumberTooLong));
    let many: String = (0..40).map(|k| format!(r#""k{k}":{k}"#)).collect::<Vec<_>>().join(",");
    same_both_ways(format!("{{{many},\"K3\":1}}").as_bytes(), false);
    same_both_ways(format!("{{{many},\"model\":\"m\"}}").as_bytes(), false);
}

/// A generated corpus of request-like bodies, each also cut short and with bytes changed:
/// both readers always give the same answer.
#[test]
fn both_readers_agree_on_a_generated_corpus() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let keys = [
        "model",
        "Model",
        "stream",
        "stream_options",
        "include_usage",
        "user",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "role",
        "content",
        "m\\u006fdel",
        "x",
        "",
    ];
    let atoms = [
        "\"m\"",
        "\"\"",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "7",
        "1.5e3",
        "18446744073709551616",
        "\"user\"",
        "\"system\"",
        "\"developer\"",
        "\"a\\u0041\\ud83d\\ude00\"",
        "\"\\ud800\"",
        "01",
        "\"\u{e9}\"",
        "[]",
        "{}",
    ];
    fn value(rng: &mut rand::rngs::StdRng, keys: &[&str], atoms: &[&str], depth: usize, out: &mut String) {
        let spaces = ["", " ", "\n", "\t "];
        out.push_str(spaces[rng.gen_range(0..spaces.len())]);
        match if depth > 3 { 2 } else { rng.gen_range(0..4) } {
            0 => {
                out.push('[');
                for k in 0..rng.gen_range(0..4) {
                    if k > 0 {
                        out.push(',');
                    }
                    value(rng, keys, atoms, depth + 1, out);
                }
                out.push(']');
            }
            1 => object(rng, keys, atoms, depth, out),
            _ => out.push_str(atoms[rng.gen_range(0..atoms.len())]),
        }
        out.push_str(spaces[rng.gen_range(0..spaces.len())]);
    }
    fn object(rng: &mut rand::rngs::StdRng, keys: &[&str], atoms: &[&str], depth: usize, out: &mut String) {
        out.push('{');
        for k in 0..rng.gen_range(0..5) {
            if k > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(keys[rng.gen_range(0..keys.len())]);
            out.push_str("\":");
            value(rng, keys, atoms, depth + 1, out);
        }
        out.push('}');
    }
    let mut read_fast = 0;
    for _ in 0..4000 {
        let mut body = String::new();
        object(&mut rng, &keys, &atoms, 0, &mut body);
        let b = body.as_bytes();
        if std::str::from_utf8(b).ok().and_then(|t| super::fast::scan(t, 0)).is_some() {
            read_fast += 1;
        }
        same_both_ways(b, false);
        for _ in 0..6 {
            let cut = rng.gen_range(0..=b.len());
            same_both_ways(&b[..cut], false);
            let mut m = b.to_vec();
            let at = rng.gen_range(0..m.len());
            let alphabet = b"{}[]\":,\\ 0-.eEtnu\x01\xff\x0c";
            m[at] = alphabet[rng.gen_range(0..alphabet.len())];
            same_both_ways(&m, false);
            let mut ins = b.to_vec();
            let alphabet = b"{}[]\":, \\";
            ins.insert(rng.gen_range(0..=b.len()), alphabet[rng.gen_range(0..alphabet.len())]);
            same_both_ways(&ins, false);
        }
    }
    assert!(read_fast > 400, "{read_fast}");
}

/// The prefix fingerprint is a fixed function of its parts (a fixed seed, no per-process
/// randomness): gateways agree on where a prompt goes, and so does every later build.
#[test]
fn prefix_fingerprint_is_stable() {
    let body = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}]}"#;
    let f = scan(body).unwrap().prefix(body).unwrap();
    assert_eq!(hex::encode(f), "cb24e9dedb7f3c49eed93dbbc13d14ed");
    let no_system = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    assert_ne!(scan(no_system).unwrap().prefix(no_system), Some(f));
    // The parts are kept apart: moving bytes from one to the next changes the fingerprint.
    let moved = br#"{"model":"m","messages":[{"role":"system","content":"s\"h"},{"role":"user","content":"i"}]}"#;
    assert_ne!(scan(moved).unwrap().prefix(moved), Some(f));
}
