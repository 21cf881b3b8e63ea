//! `GET /metrics/dashboard` in a real headless browser (Debian's chromium over the DevTools
//! protocol): no console error on load, and after traffic the page shows every backend's
//! address and a non-zero request rate, on a laptop and on a phone-sized screen. Screenshots
//! are kept in target/test-artifacts/ (not committed).

use crate::common::browser;
use crate::common::gateway::{spawn_gateway, spawn_gateway_with_admin_token, Gw, ADMIN_TOKEN};
use crate::common::{spawn_sim, Proc};
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "client-key-dashboard-alice-0123";
const BOB: &str = "client-key-dashboard-bob-456789";

fn yaml(sims: &[&Proc]) -> String {
    let list: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n  - {{ name: bob, key: \"{BOB}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://vllm.internal/v1\", models: [\"*\"], backends: [{}] }}\n",
        list.join(", ")
    )
}

async fn traffic(url: String, key: &'static str, n: usize) {
    let c = reqwest::Client::new();
    for _ in 0..n {
        let body = json!({"model": "sim-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        if let Ok(r) = c.post(&url).bearer_auth(key).json(&body).send().await {
            let _ = r.bytes().await;
        }
    }
}

async fn dashboard_json(gw: &Gw, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(gw.admin_url("/metrics/dashboard.json"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits (20 s at most) until the page shows a non-zero request rate and both backends.
async fn wait_for_traffic_on_page(b: &mut browser::Browser, sims: &[&Proc]) -> (f64, Vec<String>) {
    let mut last = (0.0, Vec::new());
    for _ in 0..80 {
        let rps = b.eval("Number(document.getElementById('rps').dataset.value || 0)").await.as_f64().unwrap_or(0.0);
        let rows = b.eval("[...document.querySelectorAll('tr.backend')].map(r => r.dataset.address)").await;
        let rows: Vec<String> = serde_json::from_value(rows).unwrap_or_default();
        last = (rps, rows);
        if last.0 > 0.0 && sims.iter().all(|s| last.1.contains(&s.addr.to_string())) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

#[tokio::test]
async fn the_dashboard_renders_backends_and_rates_in_a_real_browser() {
    let Some(mut b) = browser::launch().await else { return };
    let (s1, s2) = (spawn_sim(&["--tokens", "8"]).await, spawn_sim(&["--tokens", "8"]).await);
    let gw = spawn_gateway("", &yaml(&[&s1, &s2]), &[]).await;
    let url = gw.url("/v1/chat/completions");
    // Light traffic all along, so every window the page looks at has some.
    let load = tokio::spawn(async move {
        loop {
            tokio::join!(traffic(url.clone(), ALICE, 3), traffic(url.clone(), BOB, 1));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    for _ in 0..100 {
        if dashboard_json(&gw, None).await.1["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    b.open(&gw.admin_url("/metrics/dashboard")).await;
    b.viewport(1280, 800, false).await;
    let (rps, rows) = wait_for_traffic_on_page(&mut b, &[&s1, &s2]).await;
    assert!(rps > 0.0, "request rate on the page: {rps}");
    let html = b.eval("document.documentElement.outerHTML").await.as_str().unwrap().to_string();
    for sim in [&s1, &s2] {
        assert!(rows.contains(&sim.addr.to_string()) && html.contains(&sim.addr.to_string()), "{rows:?}");
    }
    let keys = b.eval("document.querySelector('#keys tbody').textContent").await;
    assert!(keys.as_str().unwrap().contains("alice"), "{keys}");
    assert!(!html.contains(ALICE) && !html.contains(BOB), "key material on the page");
    for id in ["latency", "ttft"] {
        let text = b.eval(&format!("document.getElementById('{id}').textContent")).await;
        assert!(text.as_str().unwrap().contains("ms"), "{id}: {text}");
    }
    // The page updates itself: the sparkline gains a point per poll.
    let mut points = 0;
    for _ in 0..40 {
        points = b
            .eval("document.querySelector('#spark polyline').getAttribute('points').split(' ').length")
            .await
            .as_u64()
            .unwrap_or(0);
        if points >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(points >= 3, "the page did not update itself");
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    b.screenshot(&artifacts.join("dashboard.png")).await;

    // A phone: the page itself never scrolls sideways (wide tables scroll in their box).
    b.viewport(390, 844, true).await;
    let overflow = b.eval("document.documentElement.scrollWidth - window.innerWidth").await;
    assert!(overflow.as_f64().unwrap() <= 0.0, "page wider than a phone by {overflow} px");
    b.screenshot(&artifacts.join("dashboard-phone.png")).await;

    let errors = b.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    load.abort();
}

#[tokio::test]
async fn the_page_is_self_contained_and_the_json_needs_the_admin_token() {
    let sim = spawn_sim(&[]).await;
    let gw = spawn_gateway_with_admin_token("", &yaml(&[&sim]), &[]).await;
    let c = reqwest::Client::new();
    // The page, script and style sheet hold no data: served without the token, from the
    // binary, referring to nothing outside the gateway.
    for (path, ct) in [
        ("/metrics/dashboard", "text/html"),
        ("/metrics/dashboard.js", "text/javascript"),
        ("/metrics/dashboard.css", "text/css"),
    ] {
        let r = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ct), "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("://"), "{path} refers to another site");
    }
    assert_eq!(dashboard_json(&gw, None).await.0, 401);
    assert_eq!(c.get(gw.admin_url("/metrics")).send().await.unwrap().status(), 401);
    traffic(gw.url("/v1/chat/completions"), ALICE, 3).await;
    let (status, v) = dashboard_json(&gw, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let backend = &v["providers"][0]["backends"][0];
    assert_eq!(backend["address"], sim.addr.to_string());
    assert_eq!(backend["circuit"], "closed");
    assert!(v["open_streams"].is_number() && v["open_tunnels"].is_number(), "{v}");
    // No admission queue in this gateway: the field is left out, not shown as zero.
    assert!(v.get("queues").is_none(), "{v}");
    assert!(!v.to_string().contains(ALICE));
}

/// `mcas_backend_circuit_open` follows a backend whose circuit opened.
#[tokio::test]
async fn a_dead_backend_shows_down_with_its_circuit_open() {
    let sim = spawn_sim(&[]).await;
    let dead = format!("127.0.0.1:{}", crate::common::free_port());
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{ALICE}\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://vllm.internal/v1\", models: [\"*\"], backends: [\"{}\", \"{dead}\"], \
         balance: round_robin, circuit: {{ failures: 1, window: 10s, cooldown: 60s }} }}\n",
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    traffic(gw.url("/v1/chat/completions"), ALICE, 4).await;
    let (_, v) = dashboard_json(&gw, None).await;
    let b = v["providers"][0]["backends"].as_array().unwrap().iter().find(|b| b["address"] == dead).unwrap().clone();
    assert_eq!(b["circuit"], "open", "{v}");
    assert_eq!(b["in_rotation"], false, "{v}");
    let page = gw.metrics_with("mcas_backend_circuit_open{").await;
    let line = page.lines().find(|l| l.starts_with("mcas_backend_circuit_open{") && l.contains(&dead)).unwrap();
    assert!(line.ends_with(" 1"), "{line}");
}
