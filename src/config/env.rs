//! The seed's environment variables, which override the YAML file (binding names).

use super::schema::{FileConfig, OneOrMany, ProviderSection};
use super::{ConfigError, Env};

pub const GATEWAY_HOST: &str = "MCAS_GATEWAY_HOST";
pub const GATEWAY_PORT: &str = "MCAS_GATEWAY_PORT";
pub const VLLM_URL: &str = "MCAS_VLLM_URL";
pub const VLLM_KEY: &str = "MCAS_VLLM_KEY";
pub const VLLM_URL_KEY: &str = "MCAS_VLLM_URL_KEY";

pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const DEFAULT_PORT: u16 = 18080;
pub const DEFAULT_VLLM_URL: &str = "http://127.0.0.1:8000/v1";
/// The provider the `MCAS_VLLM_*` variables describe.
pub const DEFAULT_PROVIDER: &str = "vllm";

fn non_empty(env: &Env, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Applies `MCAS_GATEWAY_HOST/PORT` to the first listener and `MCAS_VLLM_URL/KEY` to the
/// provider named `vllm` (created, serving every model, when the file has no providers).
pub fn apply_overrides(mut file: FileConfig, env: &Env, errors: &mut Vec<ConfigError>) -> FileConfig {
    let host = non_empty(env, GATEWAY_HOST);
    let port = non_empty(env, GATEWAY_PORT);
    if host.is_some() || port.is_some() {
        let mut listeners = file.server.listen.take().map(OneOrMany::into_vec).unwrap_or_default();
        let first = listeners.first().cloned().unwrap_or_else(|| format!("{DEFAULT_HOST}:{DEFAULT_PORT}"));
        let (file_host, file_port) = split_host_port(&first);
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) => p.to_string(),
                Err(_) => {
                    errors.push(ConfigError::new(GATEWAY_PORT, format!("not a port number: {p:?}")));
                    file_port
                }
            },
            None => file_port,
        };
        let host = host.unwrap_or(file_host);
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if listeners.is_empty() {
            listeners.push(addr);
        } else {
            listeners[0] = addr;
        }
        file.server.listen = Some(OneOrMany::Many(listeners));
    }

    let key = match (non_empty(env, VLLM_KEY), non_empty(env, VLLM_URL_KEY)) {
        (Some(a), Some(b)) if a != b => {
            errors.push(ConfigError::new(
                VLLM_KEY,
                format!("{VLLM_KEY} and {VLLM_URL_KEY} are both set and differ; set only one"),
            ));
            None
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    let url = non_empty(env, VLLM_URL);
    if file.providers.is_empty() {
        file.providers.push(ProviderSection {
            name: DEFAULT_PROVIDER.to_string(),
            url: url.unwrap_or_else(|| DEFAULT_VLLM_URL.to_string()),
            api_key: key,
            ..Default::default()
        });
    } else if let Some(p) = file.providers.iter_mut().find(|p| p.name == DEFAULT_PROVIDER) {
        if let Some(url) = url {
            p.url = url;
        }
        if let Some(key) = key {
            p.api_key = Some(key);
        }
    } else if url.is_some() {
        errors.push(ConfigError::new(
            VLLM_URL,
            format!("is set but no provider is named {DEFAULT_PROVIDER:?} (name one so, or unset it)"),
        ));
    }
    file
}

/// `host:port` → (host, port); IPv6 in brackets.
fn split_host_port(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (addr.to_string(), DEFAULT_PORT.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::FileConfig;

    fn run(vars: &[(&str, &str)], file: FileConfig) -> (FileConfig, Vec<ConfigError>) {
        let vars: Vec<(String, String)> = vars.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let env = move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut errors = Vec::new();
        let f = apply_overrides(file, &env, &mut errors);
        (f, errors)
    }

    #[test]
    fn host_and_port() {
        let (f, e) = run(&[(GATEWAY_PORT, "9000")], FileConfig::default());
        assert!(e.is_empty());
        assert_eq!(f.server.listen.unwrap().into_vec(), vec!["0.0.0.0:9000".to_string()]);
        let (f, _) = run(&[(GATEWAY_HOST, "127.0.0.2")], FileConfig::default());
        assert_eq!(f.server.listen.unwrap().into_vec(), vec!["127.0.0.2:18080".to_string()]);
        let (_, e) = run(&[(GATEWAY_PORT, "http")], FileConfig::default());
        assert_eq!(e[0].path, GATEWAY_PORT);
    }

    #[test]
    fn vllm_defaults_and_keys() {
        let (f, e) = run(&[(VLLM_URL_KEY, "k1")], FileConfig::default());
        assert!(e.is_empty());
        assert_eq!(f.providers[0].url, DEFAULT_VLLM_URL);
        assert_eq!(f.providers[0].api_key.as_deref(), Some("k1"));
        let (_, e) = run(&[(VLLM_KEY, "a"), (VLLM_URL_KEY, "b")], FileConfig::default());
        assert!(e[0].message.contains("differ"));
        assert!(!e[0].message.contains('a') || !e[0].message.contains("\"a\""));
        let (_, e) = run(&[(VLLM_KEY, "same"), (VLLM_URL_KEY, "same")], FileConfig::default());
        assert!(e.is_empty());
    }
}
