//! `host:port` as written in the config (a provider's URL host, `backends[]`, `discover.dns`):
//! one split, one way of dropping an IPv6 literal's brackets, one address lookup at load.

use super::ConfigError;
use std::net::{SocketAddr, ToSocketAddrs};

/// `[::1]` → `::1`; any other host as it is.
pub fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `host:port` → (`host`, `port`), the host as written (brackets kept); `None` without a
/// `:` followed by a port number.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (h, p) = text.rsplit_once(':')?;
    Some((h, p.parse::<u16>().ok()?))
}

/// Every address `host` resolves to, in the resolver's order; none (and an error at `path`)
/// when it cannot be resolved or resolves to nothing.
pub fn lookup(path: &str, host: &str, port: u16, errors: &mut Vec<ConfigError>) -> Vec<SocketAddr> {
    match (unbracket(host), port).to_socket_addrs() {
        Ok(addrs) => {
            let all: Vec<SocketAddr> = addrs.collect();
            if all.is_empty() {
                errors.push(ConfigError::new(path, format!("{host} resolves to no address")));
            }
            all
        }
        Err(e) => {
            errors.push(ConfigError::new(path, format!("cannot resolve {host}: {e}")));
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_split_as_written() {
        assert_eq!(split_host_port("vllm:8000"), Some(("vllm", 8000)));
        assert_eq!(split_host_port("[::1]:8000"), Some(("[::1]", 8000)));
        assert_eq!(split_host_port("vllm"), None);
        assert_eq!(split_host_port("vllm:http"), None);
        assert_eq!(unbracket("[::1]"), "::1");
        assert_eq!(unbracket("vllm"), "vllm");
    }

    #[test]
    fn a_bracketed_literal_resolves_to_itself() {
        let mut errors = Vec::new();
        assert_eq!(lookup("p", "[::1]", 80, &mut errors), vec![SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 80))]);
        assert!(errors.is_empty());
    }
}
