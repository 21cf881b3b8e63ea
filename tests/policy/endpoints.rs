//! The model check on every endpoint the default route table sends by model (`/v1/*` and
//! vLLM's endpoints beside `/v1`), each dressed in every way the chat endpoint is: other
//! content types, path spellings and JSON spellings of `model`. A forbidden model never
//! reaches the upstream; an allowed one arrives byte for byte.

use super::{assert_nothing_forwarded, code, refused_then_passed, request, send, Capture, RESTRICTED};
use crate::common::gateway::{spawn_gateway, Gw};

/// JSON endpoints routed by model, as vLLM serves them.
const ENDPOINTS: [&str; 14] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/audio/speech",
    "/v1/rerank",
    "/v1/score",
    "/v1/classify",
    "/tokenize",
    "/detokenize",
    "/v2/rerank",
    "/rerank",
    "/score",
    "/pooling",
];

/// A gateway with the default routes (no `routes:`) in front of the capture upstream.
async fn setup() -> (Capture, Gw) {
    let cap = Capture::start().await;
    let rest = format!(
        "keys:\n  - {{ name: restricted, key: \"{RESTRICTED}\", models: [\"allowed-*\"] }}\n\
         providers:\n  - {{ name: cap, url: \"http://{}/v1\", models: [\"*\"] }}\n",
        cap.addr
    );
    (cap.clone(), spawn_gateway("", &rest, &[]).await)
}

fn body(model: &str) -> Vec<u8> {
    format!(r#"{{"model":"{model}","input":"hi","prompt":"hi","tokens":[1,2]}}"#).into_bytes()
}

#[tokio::test]
async fn every_endpoint_checks_the_model_whatever_the_content_type() {
    let (cap, gw) = setup().await;
    let types = [
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("application/json; charset=utf-16"),
        Some("APPLICATION/JSON"),
        Some("application/vnd.api+json"),
    ];
    for path in ENDPOINTS {
        for ct in types {
            let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            let seen = refused_then_passed(&cap, &gw, path, &headers, &body("secret-b"), &body("allowed-a")).await;
            assert_eq!(seen.target, path, "beside /v1 or under it, as vLLM serves it");
        }
        // Not JSON, a form, or compressed: refused, whatever the model inside.
        for headers in [
            vec![("content-type", "application/octet-stream")],
            vec![("content-type", "application/x-www-form-urlencoded")],
            vec![("content-type", "application/json"), ("content-encoding", "gzip")],
        ] {
            let (status, _) = send(&gw, &request("POST", path, RESTRICTED, &headers, b"model=secret-b")).await;
            assert!(status == 400 || status == 415, "{path} {headers:?}: {status}");
        }
        assert_nothing_forwarded(&cap, path);
    }
}

#[tokio::test]
async fn every_endpoint_refuses_odd_spellings_of_model() {
    let (cap, gw) = setup().await;
    let json = [("content-type", "application/json")];
    let cases: [&[u8]; 5] = [
        br#"{"model":"allowed-a","model":"secret-b"}"#,
        br#"{"model":"allowed-a","mod\u0065l":"secret-b"}"#,
        br#"{"model":"allowed-a","Model":"secret-b"}"#,
        br#"{"model":["secret-b"]}"#,
        br#"{"model":"allowed-a"}{"model":"secret-b"}"#,
    ];
    for path in ENDPOINTS {
        for case in cases {
            let (status, answer) = send(&gw, &request("POST", path, RESTRICTED, &json, case)).await;
            assert_eq!(status, 400, "{path} {}: {answer}", String::from_utf8_lossy(case));
            code(&answer);
        }
        // The model in the query may not disagree with the body's.
        let (status, _) =
            send(&gw, &request("POST", &format!("{path}?model=secret-b"), RESTRICTED, &json, &body("allowed-a"))).await;
        assert_eq!(status, 400, "{path}?model=");
    }
    assert_nothing_forwarded(&cap, "odd spellings");
}

#[tokio::test]
async fn path_spellings_of_the_endpoints_beside_v1_are_checked_too() {
    let (cap, gw) = setup().await;
    let json = [("content-type", "application/json")];
    for path in ["//tokenize", "/tokenize/", "/%74okenize", "/./score", "/x/../rerank", "/v2//rerank", "/TOKENIZE"] {
        let (status, answer) = send(&gw, &request("POST", path, RESTRICTED, &json, &body("secret-b"))).await;
        assert!(status == 403 || status == 404 || status == 400, "{path}: {status} {answer}");
        code(&answer);
        assert_nothing_forwarded(&cap, path);
    }
}
