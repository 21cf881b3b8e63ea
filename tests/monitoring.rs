//! The Grafana dashboard (conf/grafana/) and the Prometheus alerting rules
//! (conf/prometheus/alerts.yml) only query metrics the gateway exports; the rules pass
//! `promtool check rules` and fire as expected under `promtool test rules`
//! (tests/prometheus/alerts_test.yml).

use crate::common::gateway::spawn_gateway;
use crate::common::spawn_sim;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `mcas_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mcas_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every `expr` string anywhere in a JSON document (Grafana targets, YAML rules as JSON).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push(e.to_string()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

fn exported() -> BTreeSet<String> {
    mcas::observe::metrics::family_names().into_iter().collect()
}

/// Whether `name` is an exported family or a histogram's `_bucket`, `_sum`, `_count` series.
fn is_exported(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|b| families.contains(b)))
}

fn queries_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).unwrap()
    } else {
        serde_yaml::from_str(&text).unwrap()
    };
    let mut out = Vec::new();
    exprs(&doc, &mut out);
    out
}

#[test]
fn dashboards_and_alert_rules_query_only_exported_metrics() {
    let families = exported();
    assert!(families.contains("mcas_requests_total") && families.contains("mcas_backend_circuit_open"));
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("conf/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.push(Path::new(ROOT).join("conf/prometheus/alerts.yml"));
    for file in files {
        let queries = queries_of(&file);
        let names: Vec<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
        assert!(names.len() >= 5, "{}: only {} metric names found", file.display(), names.len());
        let unknown: Vec<_> = names.iter().filter(|n| !is_exported(n, &families)).collect();
        assert!(unknown.is_empty(), "{}: not exported by the gateway: {unknown:?}", file.display());
    }
    // The checker itself: a misspelt or missing metric is caught.
    assert!(!is_exported("mcas_queue_depth", &families));
    assert!(!is_exported("mcas_request_duration_seconds_bukket", &families));
    assert!(is_exported("mcas_request_duration_seconds_bucket", &families));
    assert_eq!(metric_names("sum(rate(mcas_a_total{x=\"y\"}[5m])) / mcas_b"), ["mcas_a_total", "mcas_b"]);
}

/// What a running gateway's `/metrics` shows is all in the registry's list (the list the
/// check above trusts is complete for what is exported).
#[tokio::test]
async fn the_registry_list_covers_what_a_running_gateway_exports() {
    let sim = spawn_sim(&[]).await;
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"client-key-monitoring-0123456\", models: [\"*\"] }}\n\
         providers:\n  - {{ name: vllm, url: \"http://{}/v1\", models: [\"*\"] }}\n",
        sim.addr
    );
    let gw = spawn_gateway("", &rest, &[]).await;
    let body =
        serde_json::json!({"model": "sim-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-key-monitoring-0123456")
        .json(&body)
        .send()
        .await
        .unwrap();
    let _ = r.bytes().await.unwrap();
    let page = gw.metrics_with("mcas_ttft_seconds_bucket").await;
    let families = exported();
    let shown: BTreeSet<&str> = page.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(shown.len() >= 10, "{page}");
    for name in shown {
        assert!(families.contains(name), "{name} is exported but not in the registry's list");
    }
}

fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    if std::env::var("MCAS_TEST_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("skipped: promtool is not installed (MCAS_TEST_SKIP_PROMTOOL=1)");
        return None;
    }
    panic!("promtool is not installed (apt-get install prometheus; or MCAS_TEST_SKIP_PROMTOOL=1 to skip)");
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool() else { return };
    for args in
        [["check", "rules", "conf/prometheus/alerts.yml"], ["test", "rules", "tests/prometheus/alerts_test.yml"]]
    {
        let out = Command::new(promtool).args(args).current_dir(ROOT).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "{text}");
    }
}
