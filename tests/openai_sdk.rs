//! The official OpenAI Python SDK (tests/openai/client.py) against the gateway in front of the
//! sim: chat and legacy completions, streaming with and without `include_usage`, model lists,
//! request ids, a 300 KB prompt, 20 concurrent async streams, and the SDK's typed errors for
//! each refusal (401, 403, 404, 400, 429 with Retry-After).
//!
//! Needs Python with `openai` installed: `.ci/run` makes `.venv`; or set `MCAS_TEST_PYTHON`.

use crate::common::gateway::spawn_gateway;
use crate::common::{python, spawn_sim};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "sk-gateway-sdk-0123456789";
const LIMITED: &str = "sk-gateway-limited-0123456789";

#[tokio::test]
async fn openai_python_sdk_through_the_gateway() {
    let sim = spawn_sim(&["--models", "sim-model,other-model", "--tokens", "8"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"], limits: {{ rpm: 1000 }} }}\n  - {{ name: tight, key: \"{LIMITED}\", models: [\"sim-model\"], limits: {{ rpm: 2 }} }}\nproviders:\n  - {{ name: sim, url: \"http://{}/v1\", models: [\"*\"] }}\n",
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai/client.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script).args([gw.url("/v1"), KEY.to_string(), LIMITED.to_string()]);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("client finished").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!("the SDK client printed no summary: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    eprintln!("{v:#}");
    assert!(!v["chat"]["content"].as_str().unwrap().is_empty(), "{v}");
    assert!(v["chat"]["total_tokens"].as_u64().unwrap() > 0);
    // include_usage asked: the usage chunk arrives last; not asked: the gateway's own usage
    // event is removed, so the SDK sees only content chunks.
    assert!(v["stream_usage"]["usage_total"].as_u64().unwrap() > 0, "{v}");
    assert!(!v["stream_usage"]["text"].as_str().unwrap().is_empty());
    assert_eq!(v["stream_plain"]["usage_chunks"], 0, "{v}");
    assert_eq!(v["stream_plain"]["empty_choices"], 0, "{v}");
    assert!(!v["stream_plain"]["text"].as_str().unwrap().is_empty());
    assert!(v["completion"]["total_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["models"], serde_json::json!(["other-model", "sim-model"]));
    assert_eq!(v["raw"]["request_id"], "sdk-req-42");
    assert!(v["raw"]["remaining"].as_str().is_some_and(|r| r.parse::<u64>().is_ok()), "{v}");
    assert!(v["big"]["prompt_tokens"].as_u64().unwrap() > 1000, "{v}");
    let err = |name: &str, class: &str, status: u64| {
        assert_eq!(v[name]["class"], class, "{name}: {}", v[name]);
        assert_eq!(v[name]["status"], status, "{name}: {}", v[name]);
    };
    err("bad_key", "AuthenticationError", 401);
    err("unknown_model", "NotFoundError", 404);
    err("bad_body", "BadRequestError", 400);
    err("forbidden_model", "PermissionDeniedError", 403);
    err("rate_limited", "RateLimitError", 429);
    assert!(v["rate_limited"]["retry_after"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()), "{v}");
    assert_eq!(v["async_streams_with_text"], 20);
    // No key reached the access log (written by its own thread every 20 ms: let it catch up).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = gw.proc.logs();
    assert!(!logs.contains(KEY) && !logs.contains(LIMITED), "a key reached the log");
}
