#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

const MINIMAL_ENV: &[(&str, &str)] =
    &[(ENV_BOT_TOKEN, "123:secret-token"), (ENV_GATEWAY_KEY, "gw-key"), (ENV_MODEL, "m1"), (ENV_STATE_DIR, "/tmp/tg")];

fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match Config::from_yaml(text, "test.yaml", false, &env_of(env)) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(list)) => list.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn environment_alone_is_enough_and_defaults_apply() {
    let c = Config::from_yaml("", "env", false, &env_of(MINIMAL_ENV)).unwrap();
    assert_eq!(c.gateway.url, "http://127.0.0.1:18080");
    assert_eq!(c.telegram.api_url, "https://api.telegram.org");
    assert_eq!(c.status_listen.to_string(), "127.0.0.1:18090");
    assert_eq!(c.telegram.stream_mode, StreamMode::Draft);
    assert_eq!(c.telegram.poll_timeout, Duration::from_secs(30));
    assert!(c.telegram.allowed_users.ids.is_empty() && !c.telegram.allowed_users.all);
    assert_eq!(c.telegram.bot_token.expose(), "123:secret-token");
    // Secrets stay out of Debug output.
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret-token") && !debug.contains("gw-key"), "{debug}");
}

#[test]
fn missing_values_are_named_all_at_once() {
    let errs = errors("", &[]);
    let joined = errs.join("\n");
    for field in ["telegram.bot_token", "gateway.key", "gateway.model", "state_dir"] {
        assert!(joined.contains(field), "{field} not in {joined}");
    }
    assert!(joined.contains(ENV_BOT_TOKEN));
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let errs = errors("telegram:\n  bot_tokn: x\n", MINIMAL_ENV);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("bot_tokn") && errs[0].contains("telegram"), "{errs:?}");
    let errs = errors("chat:\n  history_messages: many\n", MINIMAL_ENV);
    assert!(errs[0].contains("history_messages"), "{errs:?}");
}

#[test]
fn environment_wins_over_the_file_and_file_expands_variables() {
    let yaml = "gateway:\n  url: http://file:1\n  model: ${MODEL_FROM_ENV:-fallback}\n";
    let mut env: Vec<(&str, &str)> = vec![(ENV_BOT_TOKEN, "1:t"), (ENV_GATEWAY_KEY, "k"), (ENV_STATE_DIR, "/s")];
    let c = Config::from_yaml(yaml, "f", false, &env_of(&env)).unwrap();
    assert_eq!(c.gateway.url, "http://file:1");
    assert_eq!(c.gateway.model, "fallback");
    env.push((ENV_GATEWAY_URL, "http://env:2/"));
    env.push(("MODEL_FROM_ENV", "expanded"));
    let c = Config::from_yaml(yaml, "f", false, &env_of(&env)).unwrap();
    assert_eq!(c.gateway.url, "http://env:2");
    assert_eq!(c.gateway.model, "expanded");
    env.push((ENV_MODEL, "from-env"));
    let c = Config::from_yaml(yaml, "f", false, &env_of(&env)).unwrap();
    assert_eq!(c.gateway.model, "from-env");
}

#[test]
fn unset_variable_in_file_is_an_error_naming_field_and_variable() {
    let errs = errors("gateway:\n  key: ${NOPE}\n", &[(ENV_BOT_TOKEN, "1:t"), (ENV_MODEL, "m"), (ENV_STATE_DIR, "/s")]);
    assert_eq!(errs, ["gateway.key: environment variable NOPE is not set"]);
}

#[test]
fn allowed_users_forms() {
    let yaml = "telegram:\n  allowed_users: [1, 2]\n";
    let c = Config::from_yaml(yaml, "f", false, &env_of(MINIMAL_ENV)).unwrap();
    assert!(c.telegram.allowed_users.allows(2) && !c.telegram.allowed_users.allows(3));
    let mut env = MINIMAL_ENV.to_vec();
    env.push((ENV_ALLOWED_USERS, "*"));
    let c = Config::from_yaml(yaml, "f", false, &env_of(&env)).unwrap();
    assert!(c.telegram.allowed_users.allows(3));
    let mut env = MINIMAL_ENV.to_vec();
    env.push((ENV_ALLOWED_USERS, "5, bob"));
    let errs = errors("", &env);
    assert!(errs[0].starts_with(ENV_ALLOWED_USERS) && errs[0].contains("bob"), "{errs:?}");
}

#[test]
fn bad_values_are_named_without_echoing_secrets() {
    let mut env = MINIMAL_ENV.to_vec();
    env[0] = (ENV_BOT_TOKEN, "no-colon-secretvalue");
    env.push((ENV_STATUS_LISTEN, "localhost"));
    env.push((ENV_GATEWAY_URL, "http://gw:1/v1"));
    let yaml = "telegram:\n  stream_mode: edit\n  poll_timeout: 90s\n";
    let errs = errors(yaml, &env).join("\n");
    assert!(!errs.contains("secretvalue"), "{errs}");
    assert!(errs.contains(ENV_BOT_TOKEN), "{errs}");
    assert!(errs.contains(ENV_STATUS_LISTEN), "{errs}");
    assert!(errs.contains("without /v1"), "{errs}");
    assert!(errs.contains("telegram.poll_timeout"), "{errs}");
    let errs = errors("telegram:\n  stream_mode: fast\n", MINIMAL_ENV);
    assert!(errs[0].contains("stream_mode"), "{errs:?}");
}

#[test]
fn webhook_needs_its_section_and_a_valid_secret() {
    let env = env_of(MINIMAL_ENV);
    let err = Config::from_yaml("", "f", true, &env).unwrap_err().to_string();
    assert!(err.contains("telegram.webhook: is required with --webhook"), "{err}");
    let yaml = "telegram:\n  webhook:\n    listen: 127.0.0.1:8443\n    secret_token: bad token!\n";
    let err = Config::from_yaml(yaml, "f", true, &env).unwrap_err().to_string();
    assert!(err.contains("telegram.webhook.secret_token"), "{err}");
    let yaml = "telegram:\n  webhook:\n    listen: 127.0.0.1:8443\n    secret_token: s3cr3t_x\n";
    let c = Config::from_yaml(yaml, "f", true, &env).unwrap();
    let hook = c.telegram.webhook.unwrap();
    assert_eq!(hook.path, "/telegram/webhook");
    assert!(hook.secret_token.matches(b"s3cr3t_x"));
    // Without --webhook the section is ignored.
    assert!(Config::from_yaml(yaml, "f", false, &env).unwrap().telegram.webhook.is_none());
}
