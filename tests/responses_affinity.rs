//! Responses API behind a fleet: each replica keeps its own responses (as vLLM does), so a
//! follow-up only works on the replica that produced the previous response. The gateway seals
//! the replica into the ids clients see; two gateway instances sharing `mcp.session_key`
//! route every follow-up, retrieve and cancel to the right replica.

use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::{spawn_sim, Proc};
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "sk-affinity-alice-0123456789";
const BOB: &str = "sk-affinity-bob-0123456789";
const SEAL: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

async fn sims(n: usize) -> Vec<Proc> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(spawn_sim(&["--models", "resp-model", "--tokens", "3", "--replica-id", &format!("r{i}")]).await);
    }
    v
}

async fn gateway(sims: &[&Proc], sealed: bool) -> Gw {
    let backends: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let mcp = if sealed { format!("mcp: {{ session_key: \"{SEAL}\" }}\n") } else { String::new() };
    let rest = format!(
        "{mcp}keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"*\"] }}\nproviders:\n  - name: sim\n    url: \"http://vllm.test/v1\"\n    backends: [{}]\n    balance: round_robin\n    health: {{ interval: 100ms, timeout: 100ms, unhealthy_after: 1, healthy_after: 1 }}\n",
        backends.join(", ")
    );
    spawn_gateway("", &rest, &[]).await
}

async fn create(gw: &Gw, key: &str, previous: Option<&str>) -> (u16, Value) {
    let mut body = json!({"model": "resp-model", "input": "hello"});
    if let Some(p) = previous {
        body["previous_response_id"] = json!(p);
    }
    let r = reqwest::Client::new().post(gw.url("/v1/responses")).bearer_auth(key).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Follow-ups through alternating gateways: the number that succeeded out of `n` chains of 3.
async fn chains(a: &Gw, b: &Gw, n: usize) -> (usize, usize) {
    let (mut ok, mut total) = (0, 0);
    for _ in 0..n {
        let (s, v) = create(a, ALICE, None).await;
        assert_eq!(s, 200, "{v}");
        let mut id = v["id"].as_str().unwrap().to_string();
        for turn in 0..3 {
            let gw = if turn % 2 == 0 { b } else { a };
            total += 1;
            let (s, v) = create(gw, ALICE, Some(&id)).await;
            if s == 200 {
                ok += 1;
                assert_eq!(v["previous_response_id"], json!(id), "{v}");
                id = v["id"].as_str().unwrap().to_string();
            } else {
                assert_eq!(s, 404, "{v}");
                break;
            }
        }
    }
    (ok, total)
}

#[tokio::test]
async fn follow_ups_need_the_sealed_replica() {
    let fleet = sims(3).await;
    let refs: Vec<&Proc> = fleet.iter().collect();
    // Without affinity (no sealing key) round robin sends most follow-ups to a replica that
    // does not hold the previous response: vLLM's 404.
    let (a, b) = (gateway(&refs, false).await, gateway(&refs, false).await);
    let (ok, total) = chains(&a, &b, 10).await;
    eprintln!("without affinity: {ok}/{total} follow-ups succeeded");
    assert!(ok < total / 2, "without affinity {ok}/{total} follow-ups succeeded");
    drop((a, b));
    // With it, two instances sharing the key: every follow-up succeeds.
    let (a, b) = (gateway(&refs, true).await, gateway(&refs, true).await);
    let (ok, total) = chains(&a, &b, 20).await;
    assert_eq!((ok, total), (60, 60), "with affinity");

    // Retrieve and cancel reach the replica that holds the response, from either instance.
    let (_, v) = create(&a, ALICE, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_") && id.len() > 60, "{id}");
    for gw in [&a, &b, &a] {
        let r =
            reqwest::Client::new().get(gw.url(&format!("/v1/responses/{id}"))).bearer_auth(ALICE).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["id"], json!(id), "the retrieved response carries the id the client holds");
        // vLLM refuses to cancel a finished response (400): from the right replica, not 404.
        let r = reqwest::Client::new()
            .post(gw.url(&format!("/v1/responses/{id}/cancel")))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    // Another key, a forged id, a plain backend id: 404 response_not_found.
    let tampered = format!("{}x", &id[..id.len() - 1]);
    for (key, bad) in [(BOB, id.as_str()), (ALICE, tampered.as_str()), (ALICE, "resp_0000")] {
        let (s, v) = create(&b, key, Some(bad)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("response_not_found")), "{v}");
        let r =
            reqwest::Client::new().get(b.url(&format!("/v1/responses/{bad}"))).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }

    // A streamed response: its id is sealed in response.created and response.completed.
    let r = reqwest::Client::new()
        .post(a.url("/v1/responses"))
        .bearer_auth(ALICE)
        .json(&json!({"model": "resp-model", "input": "s", "stream": true}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["response"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 3, "{text}"); // created, in_progress, completed
    assert!(ids.iter().all(|i| *i == ids[0] && i.len() > 60), "{ids:?}");
    let (s, v) = create(&b, ALICE, Some(&ids[0])).await;
    assert_eq!(s, 200, "{v}");

    // The replica that holds a response goes down: 503, never another replica.
    let holder = v["id"].as_str().unwrap().to_string();
    let served_by = {
        let r = reqwest::Client::new()
            .get(a.url(&format!("/v1/responses/{holder}")))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        r.headers()["x-mcas-replica"].to_str().unwrap().to_string()
    };
    let idx: usize = served_by.trim_start_matches('r').parse().unwrap();
    fleet[idx].terminate();
    let mut status = 0;
    for _ in 0..100 {
        status = create(&a, ALICE, Some(&holder)).await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 503);
    // A gateway whose fleet no longer has that replica: 404.
    let others: Vec<&Proc> = fleet.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, p)| p).collect();
    let c = gateway(&others, true).await;
    let (s, v) = create(&c, ALICE, Some(&holder)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("response_not_found")), "{v}");
}
