//! `providers[].discover` (backends found in DNS) and the re-resolution of the URL's host of
//! a provider without `backends` or `discover`, into [`Discover`].

use super::host::{split_host_port, unbracket};
use super::units::{positive, HumanDuration};
use super::ConfigError;
use crate::fleet::discover::{Discover, Query, DEFAULT_INTERVAL, URL_INTERVAL};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverSection {
    /// `HOST:PORT`: every A address of HOST (AAAA when it has none) is a backend on PORT (a
    /// Kubernetes headless service, DNS round robin).
    pub dns: Option<String>,
    /// `_service._tcp.domain`: SRV records, each target's addresses with the record's port and
    /// weight (the lowest priority present only).
    pub srv: Option<String>,
    /// Longest time between two resolutions; a shorter TTL in the answer comes first. Default 5s.
    pub interval: Option<HumanDuration>,
    /// `IP:PORT` of the DNS server to ask. Default: the system's (`/etc/resolv.conf`).
    pub resolver: Option<String>,
}

/// `path` is the provider's YAML path; `host`/`port` are its URL's. `None` when the provider
/// has fixed backends (or its URL names an IP address).
pub fn compile(
    path: &str,
    section: Option<DiscoverSection>,
    has_backends: bool,
    (host, port): (&str, u16),
    errors: &mut Vec<ConfigError>,
) -> Option<Discover> {
    let Some(s) = section else {
        let literal = unbracket(host).parse::<IpAddr>().is_ok();
        return (!has_backends && !literal).then(|| Discover {
            query: Query::Host { host: host.to_string(), port },
            interval: URL_INTERVAL,
            resolver: None,
            from_url: true,
        });
    };
    let path = format!("{path}.discover");
    if has_backends {
        errors.push(ConfigError::new(&path, "cannot be used with backends (discovered backends replace them)"));
    }
    let query = match (s.dns, s.srv) {
        (Some(dns), None) => host_port(&format!("{path}.dns"), &dns, errors)?,
        (None, Some(srv)) => {
            let name = srv.trim().trim_end_matches('.');
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
                errors.push(ConfigError::new(format!("{path}.srv"), format!("{srv:?} is not a DNS name")));
                return None;
            }
            Query::Srv { name: name.to_string() }
        }
        _ => {
            errors.push(ConfigError::new(
                &path,
                "needs exactly one of dns (\"HOST:PORT\") or srv (\"_name._tcp.domain\")",
            ));
            return None;
        }
    };
    let interval = positive(&format!("{path}.interval"), s.interval, DEFAULT_INTERVAL, errors);
    let resolver = s.resolver.and_then(|r| {
        r.parse::<SocketAddr>()
            .map_err(|_| errors.push(ConfigError::new(format!("{path}.resolver"), format!("{r:?} is not IP:PORT"))))
            .ok()
    });
    Some(Discover { query, interval, resolver, from_url: false })
}

fn host_port(path: &str, text: &str, errors: &mut Vec<ConfigError>) -> Option<Query> {
    match split_host_port(text).map(|(h, port)| (unbracket(h), port)) {
        Some((h, _)) if h.parse::<IpAddr>().is_ok() => {
            errors.push(ConfigError::new(path, format!("{text:?} is an IP address: list it in backends")));
            None
        }
        Some((h, port)) if !h.is_empty() && port != 0 => Some(Query::Host { host: h.to_string(), port }),
        _ => {
            errors.push(ConfigError::new(path, format!("{text:?} is not HOST:PORT")));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn errs(s: DiscoverSection, backends: bool) -> Vec<String> {
        let mut e = Vec::new();
        compile("providers[0]", Some(s), backends, ("h", 80), &mut e);
        e.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn discover_settings_are_checked_with_their_path() {
        let dns = |d: &str| DiscoverSection { dns: Some(d.into()), ..Default::default() };
        assert_eq!(
            errs(dns("10.0.0.1:8000"), false)[0],
            "providers[0].discover.dns: \"10.0.0.1:8000\" is an IP address: list it in backends"
        );
        assert!(errs(dns("vllm"), false)[0].starts_with("providers[0].discover.dns: \"vllm\" is not HOST:PORT"));
        assert!(errs(dns("vllm:8000"), true)[0].starts_with("providers[0].discover: cannot be used with backends"));
        assert!(errs(DiscoverSection::default(), false)[0].starts_with("providers[0].discover: needs exactly one"));
        let bad_resolver = DiscoverSection { resolver: Some("dns.local".into()), ..dns("vllm:8000") };
        assert_eq!(errs(bad_resolver, false), vec!["providers[0].discover.resolver: \"dns.local\" is not IP:PORT"]);
        let mut e = Vec::new();
        let srv = DiscoverSection {
            srv: Some("_vllm._tcp.svc.".into()),
            resolver: Some("127.0.0.1:53".into()),
            ..Default::default()
        };
        let d = compile("p", Some(srv), false, ("h", 80), &mut e).unwrap();
        assert!(e.is_empty());
        assert_eq!(
            (d.query, d.interval, d.resolver),
            (Query::Srv { name: "_vllm._tcp.svc".into() }, DEFAULT_INTERVAL, Some("127.0.0.1:53".parse().unwrap()))
        );
    }

    #[test]
    fn a_url_host_is_discovered_unless_it_is_an_address_or_backends_are_listed() {
        let mut e = Vec::new();
        let d = compile("p", None, false, ("api.example.com", 443), &mut e).unwrap();
        assert!(d.from_url && d.query == Query::Host { host: "api.example.com".into(), port: 443 });
        assert!(compile("p", None, false, ("127.0.0.1", 8000), &mut e).is_none());
        assert!(compile("p", None, false, ("[::1]", 8000), &mut e).is_none());
        assert!(compile("p", None, true, ("vllm.internal", 8000), &mut e).is_none());
        assert!(e.is_empty());
    }
}
