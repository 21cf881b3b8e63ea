//! vLLM's OpenAI surface through the gateway (default routes: `/v1/*` plus the endpoints vLLM
//! serves beside `/v1`): every endpoint is routed by its model, refused for a key that may not
//! use it, and its `usage` is charged to the key.

use crate::common::gateway::spawn_gateway;
use crate::common::spawn_sim;
use serde_json::{json, Value};

const ALICE: &str = "sk-surface-alice-0123456789";
const BOB: &str = "sk-surface-bob-0123456789";

const MODELS: &str = "chat-model,embed-model,resp-model,rerank-model";

fn config(sim: &str) -> String {
    format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"embed-model\"] }}\nproviders:\n  - {{ name: sim, url: \"http://{sim}/v1\", models: [\"*\"] }}\n"
    )
}

async fn post(url: &str, key: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).bearer_auth(key).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A `multipart/form-data` upload with a `model` field and a 4,000-byte file.
async fn upload(url: &str, key: &str, model: &str) -> reqwest::Response {
    let b = "surface-boundary-42";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&[7u8; 4000]);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The prompt / completion tokens `mcas_tokens_total` holds for alice and `model`.
fn tokens(metrics: &str, model: &str, kind: &str) -> u64 {
    let series = format!("mcas_tokens_total{{key=\"alice\",kind=\"{kind}\",model=\"{model}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn every_endpoint_is_routed_checked_and_charged() {
    let sim = spawn_sim(&["--models", MODELS, "--tokens", "5"]).await;
    let gw = spawn_gateway("", &config(&sim.addr.to_string()), &[]).await;
    let u = |p: &str| gw.url(p);
    let (mut embed_prompt, mut rerank_prompt) = (0, 0);

    let (s, v) = post(&u("/v1/embeddings"), BOB, json!({"model": "embed-model", "input": ["hello world", "x"]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"]["prompt_tokens"], 4); // ceil(11/4) + ceil(1/4)
    let (s, v) = post(&u("/v1/embeddings"), ALICE, json!({"model": "embed-model", "input": "abcdefgh"})).await;
    assert_eq!(s, 200, "{v}");
    embed_prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();

    let (s, v) = post(&u("/v1/completions"), ALICE, json!({"model": "chat-model", "prompt": "hi"})).await;
    assert_eq!((s, v["usage"]["completion_tokens"].as_u64()), (200, Some(5)), "{v}");
    let (s, v) = post(
        &u("/v1/chat/completions"),
        ALICE,
        json!({"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!((s, v["object"].as_str()), (200, Some("chat.completion")), "{v}");

    let (s, v) = post(&u("/v1/responses"), ALICE, json!({"model": "resp-model", "input": "tell me"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "tok1 tok2 tok3 tok4 tok5 ");
    let (resp_in, resp_out) =
        (v["usage"]["input_tokens"].as_u64().unwrap(), v["usage"]["output_tokens"].as_u64().unwrap());

    for path in ["/v1/rerank", "/v2/rerank", "/rerank"] {
        let body = json!({"model": "rerank-model", "query": "q", "documents": ["aaaa", "bbbb", "cccc"], "top_n": 2});
        let (s, v) = post(&u(path), ALICE, body).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");
        rerank_prompt += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    for path in ["/v1/score", "/score"] {
        let (s, v) = post(&u(path), ALICE, json!({"model": "rerank-model", "text_1": "q", "text_2": ["a", "b"]})).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v["data"][1]["object"], "score");
        rerank_prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
    }

    let (s, v) = post(&u("/tokenize"), ALICE, json!({"model": "chat-model", "prompt": "12345678"})).await;
    assert_eq!((s, v["count"].as_u64()), (200, Some(2)), "{v}");
    let (s, v) = post(&u("/detokenize"), ALICE, json!({"model": "chat-model", "tokens": [1, 2]})).await;
    assert_eq!((s, v["prompt"].as_str()), (200, Some("tok1 tok2 ")), "{v}");

    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let r = upload(&u(path), ALICE, "chat-model").await;
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["text"].as_str().unwrap().contains("chat-model"), "{v}");
    }

    // Bob may use embed-model only: every endpoint refuses another model before any upstream.
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "chat-model", "input": "x"})),
        ("/v1/completions", json!({"model": "chat-model", "prompt": "x"})),
        ("/v1/chat/completions", json!({"model": "chat-model", "messages": []})),
        ("/v1/responses", json!({"model": "resp-model", "input": "x"})),
        ("/v1/rerank", json!({"model": "rerank-model", "query": "q", "documents": ["a"]})),
        ("/v2/rerank", json!({"model": "rerank-model", "query": "q", "documents": ["a"]})),
        ("/v1/score", json!({"model": "rerank-model", "text_1": "a", "text_2": "b"})),
        ("/tokenize", json!({"model": "chat-model", "prompt": "x"})),
        ("/detokenize", json!({"model": "chat-model", "tokens": [1]})),
    ] {
        let (s, v) = post(&u(path), BOB, body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("model_not_allowed")), "{path}: {v}");
        // No model at all: nothing to decide on, refused.
        let (s, v) = post(&u(path), BOB, json!({"input": "x"})).await;
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("model_required")), "{path}: {v}");
    }
    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let r = upload(&u(path), BOB, "chat-model").await;
        assert_eq!(r.status(), 403, "{path}");
    }
    // The model list: bob sees his one model, alice all four.
    let list = |key: &'static str| {
        let url = u("/v1/models");
        async move {
            let v: Value = reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap();
            let mut ids: Vec<String> =
                v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(list(BOB).await, vec!["embed-model"]);
    assert_eq!(list(ALICE).await.len(), 4);

    let m = gw.metrics_with("model=\"resp-model\"").await;
    assert_eq!(tokens(&m, "embed-model", "prompt"), embed_prompt, "{m}");
    assert_eq!(tokens(&m, "embed-model", "completion"), 0, "{m}");
    assert_eq!(tokens(&m, "resp-model", "prompt"), resp_in, "{m}");
    assert_eq!(tokens(&m, "resp-model", "completion"), resp_out, "{m}");
    assert_eq!(tokens(&m, "rerank-model", "prompt"), rerank_prompt, "{m}");
    assert!(rerank_prompt > 0 && embed_prompt > 0);
}

/// A streamed Responses API answer passes through whole, its usage (nested in
/// `response.completed`) charged.
#[tokio::test]
async fn streamed_responses_are_charged() {
    let sim = spawn_sim(&["--models", MODELS, "--tokens", "4"]).await;
    let gw = spawn_gateway("", &config(&sim.addr.to_string()), &[]).await;
    let r = reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .bearer_auth(ALICE)
        .json(&json!({"model": "resp-model", "input": "abcdefgh", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(text.matches("event: response.output_text.delta").count(), 4, "{text}");
    assert!(text.contains("event: response.completed"), "{text}");
    let m = gw.metrics_with("model=\"resp-model\"").await;
    assert_eq!(tokens(&m, "resp-model", "completion"), 4, "{m}");
    assert_eq!(tokens(&m, "resp-model", "prompt"), 2, "{m}");
}

/// The official OpenAI Python SDK (tests/openai/surface.py): embeddings, the Responses API
/// (follow-ups by `previous_response_id`, retrieve, streaming) and audio.
#[tokio::test]
async fn openai_python_sdk_surface() {
    let sim = spawn_sim(&["--models", "embed-model,resp-model,audio-model", "--tokens", "3"]).await;
    // With a sealing key: the SDK carries the gateway's sealed response ids.
    let sealed = format!("mcp: {{ session_key: \"{}\" }}\n{}", "ab".repeat(32), config(&sim.addr.to_string()));
    let gw = spawn_gateway("", &sealed, &[]).await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai/surface.py");
    let mut cmd = tokio::process::Command::new(crate::common::python());
    cmd.arg(script).args([gw.url("/v1"), ALICE.to_string()]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!("the SDK client printed no summary: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(v["embeddings"], json!({"n": 2, "dims": 8, "prompt_tokens": 4}), "{v}");
    assert_eq!(v["responses"]["text"], "tok1 tok2 tok3 ", "{v}");
    assert_eq!(v["responses"]["follow_up_previous"], true, "{v}");
    assert_eq!(v["responses"]["retrieved"], true, "{v}");
    assert_eq!(
        v["responses_stream"],
        json!({"deltas": 3, "text": "tok1 tok2 tok3 ", "completed": true, "follow_up": true})
    );
    assert!(v["audio"]["transcription"].as_str().unwrap().contains("audio-model"), "{v}");
    assert!(v["audio"]["translation"].as_str().unwrap().contains("audio-model"), "{v}");
}

/// `/v1/models` behind a fleet: the union of what the replicas serve, each model once,
/// filtered per key (also for a key that may use every model).
#[tokio::test]
async fn model_list_is_merged_across_the_fleet() {
    let a = spawn_sim(&["--models", "base,only-a"]).await;
    let b = spawn_sim(&["--models", "base,only-b"]).await;
    let c = spawn_sim(&["--models", "base,only-c"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"base\", \"only-b\"] }}\nproviders:\n  - {{ name: sim, url: \"http://vllm.test/v1\", backends: [\"{}\", \"{}\", \"{}\"], models: [\"*\"] }}\n",
        a.addr, b.addr, c.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    for (key, want) in [(ALICE, vec!["base", "only-a", "only-b", "only-c"]), (BOB, vec!["base", "only-b"])] {
        for _ in 0..3 {
            let r = reqwest::Client::new().get(gw.url("/v1/models")).bearer_auth(key).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            let mut ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
            ids.sort();
            assert_eq!(ids, want, "{v}");
        }
    }
}

/// LoRA adapters: listed with `parent`, permitted by their own name only (never because
/// their base model is), reported in `vllm:lora_requests_info`.
#[tokio::test]
async fn lora_adapters_are_models_of_their_own() {
    let sim = spawn_sim(&["--models", "base", "--lora", "ad-1,ad-2", "--max-loras", "1", "--tokens", "2"]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"ad-1\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"base\"] }}\nproviders:\n  - {{ name: sim, url: \"http://{}/v1\", models: [\"*\"], hash_key: [model] }}\n",
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let chat = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    let (s, v) = post(&gw.url("/v1/chat/completions"), ALICE, chat("ad-1")).await;
    assert_eq!((s, v["model"].as_str()), (200, Some("ad-1")), "{v}");
    let (s, v) = post(&gw.url("/v1/chat/completions"), BOB, chat("ad-1")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("model_not_allowed")), "{v}");
    let (s, _) = post(&gw.url("/v1/chat/completions"), ALICE, chat("ad-2")).await;
    assert_eq!(s, 403);
    let v: Value =
        reqwest::Client::new().get(gw.url("/v1/models")).bearer_auth(ALICE).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        v["data"],
        json!([{"id": "ad-1", "object": "model", "created": 0, "owned_by": "vllm", "root": "/adapters/ad-1", "parent": "base"}])
    );
    let m = reqwest::get(sim.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        m.contains("vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}"),
        "{m}"
    );
    assert!(m.contains("mcas_sim_lora_loads_total 1"), "{m}");
}
