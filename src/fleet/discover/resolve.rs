//! Asking DNS (hickory-resolver, tokio): the A records of a host (its AAAA records when it has
//! no A record), or the SRV records
//! of a service and the addresses of their targets. The system's resolvers and `/etc/hosts`
//! by default (what `getaddrinfo` would use), or only the server given by `discover.resolver`.

use super::{Discover, Member, Query, MIN_INTERVAL};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, Resolver, TokioResolver};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted by address, no address twice.
    pub members: Vec<Member>,
    /// The shortest TTL in the answer (how long it may be trusted).
    pub valid_for: Duration,
}

/// A resolver for `d`: a cached answer is never older than its TTL nor than `d.interval`,
/// and one query waits at most `d.interval` (between 1 s and 5 s) before counting as failed.
pub fn resolver(d: &Discover) -> Result<TokioResolver, String> {
    let mut builder = match d.resolver {
        None => {
            Resolver::builder_tokio().map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
        }
        Some(server) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioConnectionProvider::default(),
            )
        }
    };
    let o = builder.options_mut();
    // The A records, or the AAAA records of a name without any: a dual-stack pod has one of
    // each and would count twice, and an IPv6 address on a host without an IPv6 route is a
    // backend that never connects.
    o.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    o.timeout = d.interval.clamp(MIN_INTERVAL, Duration::from_secs(5));
    o.attempts = 1;
    // Asked again every interval even when the record's TTL is longer: a cached answer would
    // hide a new replica until the TTL ran out (and a cached "no such name" a returning one).
    o.positive_max_ttl = Some(d.interval);
    o.negative_max_ttl = Some(d.interval);
    if d.resolver.is_some() {
        o.use_hosts_file = ResolveHosts::Never;
    }
    Ok(builder.build())
}

/// Resolves `d.query` once. An answer with no address (no record, no such name) is `Ok` with
/// no member: the caller tells it apart from a failure (timeout, refused, ...).
pub async fn resolve(resolver: &TokioResolver, d: &Discover) -> Result<Answer, String> {
    let now = Instant::now();
    let (mut members, valid_until) = match &d.query {
        Query::Host { host, port } => {
            let found = match resolver.lookup_ip(host.as_str()).await {
                Err(e) if no_records(&e) => return Ok(Answer { members: Vec::new(), valid_for: Duration::ZERO }),
                r => r.map_err(|e| e.to_string())?,
            };
            (found.iter().map(|ip| (SocketAddr::new(ip, *port), 1)).collect::<Vec<_>>(), found.valid_until())
        }
        Query::Srv { name } => srv(resolver, name).await?,
    };
    members.sort();
    members.dedup_by_key(|m| m.0);
    Ok(Answer { members, valid_for: valid_until.saturating_duration_since(now) })
}

/// The records of the lowest priority present (higher ones are backups the gateway does not
/// use); each target's addresses with the record's port and weight (0 counts as 1).
async fn srv(resolver: &TokioResolver, name: &str) -> Result<(Vec<Member>, Instant), String> {
    let found = match resolver.srv_lookup(name).await {
        Err(e) if no_records(&e) => return Ok((Vec::new(), Instant::now())),
        r => r.map_err(|e| e.to_string())?,
    };
    let mut valid_until = found.as_lookup().valid_until();
    let Some(best) = found.iter().map(|r| r.priority()).min() else {
        return Ok((Vec::new(), valid_until));
    };
    let records: Vec<_> = found.iter().filter(|r| r.priority() == best).cloned().collect();
    let lookups = records.iter().map(|r| resolver.lookup_ip(r.target().clone()));
    let mut members = Vec::new();
    for (r, ips) in records.iter().zip(futures_util::future::join_all(lookups).await) {
        let ips = match ips {
            // A target with no address adds no backend; the others stand.
            Err(e) if no_records(&e) => continue,
            r2 => r2.map_err(|e| format!("SRV target {}: {e}", r.target()))?,
        };
        valid_until = valid_until.min(ips.valid_until());
        let weight = usize::from(r.weight()).max(1);
        members.extend(ips.iter().map(|ip| (SocketAddr::new(ip, r.port()), weight)));
    }
    Ok((members, valid_until))
}

/// The name has no such record (or does not exist): an empty answer, not a failure.
fn no_records(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}
