//! The container image and the Kubernetes example (conf/kubernetes/): every manifest parses,
//! the pieces refer to each other (ConfigMap, Secret, headless Service, probes, preStop and
//! grace period), and the config the ConfigMap carries passes `mcas-gateway --check` with the
//! Secret's variables set. The image itself is not built here (no Docker daemon in CI).

use crate::common::gateway::check;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeSet;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/kubernetes");

/// Every document of every `*.yaml` file in conf/kubernetes/.
fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(DIR).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for field in ["apiVersion", "kind"] {
                assert!(v[field].is_string(), "{}: a document without {field}", path.display());
            }
            assert!(v["metadata"]["name"].is_string(), "{}: a document without metadata.name", path.display());
            docs.push(v);
        }
    }
    docs
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn the_kubernetes_example_is_consistent_and_its_config_checks() {
    let docs = manifests();
    let deploy = one(&docs, "Deployment", "mcas-gateway");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    // Config from the ConfigMap, mounted where --config points.
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(str_of).collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let volumes = pod["volumes"].as_sequence().unwrap();
    let config_vol = volumes.iter().find(|v| v["configMap"].is_mapping()).expect("a configMap volume");
    let mount = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == config_vol["name"]).unwrap();
    let cm = one(&docs, "ConfigMap", str_of(&config_vol["configMap"]["name"]));
    let file =
        config_path.strip_prefix(&format!("{}/", str_of(&mount["mountPath"]))).expect("--config under the mount");
    let config = str_of(&cm["data"][file]);

    // Secrets as environment variables, each referenced by the config as ${VAR}.
    let secret_name = str_of(&c["envFrom"][0]["secretRef"]["name"]);
    let secret = one(&docs, "Secret", secret_name);
    let vars: BTreeSet<&str> = secret["stringData"].as_mapping().unwrap().keys().map(str_of).collect();
    assert!(vars.len() >= 3, "{vars:?}");
    for var in &vars {
        assert!(config.contains(&format!("${{{var}}}")), "the config does not use ${{{var}}}");
    }

    // The vLLM pods through a headless service the config discovers.
    let vllm =
        docs.iter().find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None").expect("a headless Service");
    let host = format!(
        "{}.{}.svc.cluster.local:{}",
        str_of(&vllm["metadata"]["name"]),
        str_of(&vllm["metadata"]["namespace"]),
        vllm["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    let parsed: Value = serde_yaml::from_str(config).unwrap();
    assert_eq!(str_of(&parsed["providers"][0]["discover"]["dns"]), host);

    // Readiness on /health; preStop leaves time; the pod's grace covers sleep + drain.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    let sleep: u64 = str_of(&c["lifecycle"]["preStop"]["exec"]["command"][1]).parse().unwrap();
    let secs = |v: &Value| str_of(v).trim_end_matches('s').parse::<u64>().unwrap();
    let drain = secs(&parsed["server"]["grace_period"]) + secs(&parsed["server"]["shutdown_timeout"]);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > sleep + drain);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The carried config passes --check with the Secret's variables set.
    let env: Vec<(&str, &str)> = vars.iter().map(|v| (*v, "test-value-0123456789abcdef")).collect();
    let (code, out) = check(config, &env);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(config, &[]);
    assert_ne!(code, 0, "the config must need the Secret's variables: {out}");
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_unprivileged() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as {user}");
    assert!(lines.iter().any(|l| l.starts_with("ENTRYPOINT") && l.contains("mcas-gateway")));
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    for excluded in ["target", ".git", ".venv"] {
        assert!(ignore.lines().any(|l| l.trim() == excluded), ".dockerignore does not exclude {excluded}");
    }
}
