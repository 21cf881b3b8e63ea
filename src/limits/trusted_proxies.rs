//! `server.trusted_proxies`: CIDR blocks, and the client address they let us believe.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not a CIDR block like \"10.0.0.0/8\" or an address");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (the left-most one
/// when all are trusted). `xff` is every `X-Forwarded-For` header line in the order received:
/// a proxy may add its own line rather than extend the client's, so reading only the first
/// line would believe whatever the client wrote there. Entries a client could have forged
/// (left of an untrusted hop) are never believed. An entry that is not an address (`unknown`,
/// an obfuscated name) ends the walk at the nearest trusted hop: every client behind it then
/// shares that hop's budget, which over-limits rather than lets anyone escape a limit.
pub fn client_addr(peer: IpAddr, xff: &[&str], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut last = peer;
    // Empty list elements (`a,,b`, a trailing comma) are ignored, as HTTP lists allow them.
    for part in xff.iter().rev().flat_map(|line| line.rsplit(',')).filter(|p| !p.trim().is_empty()) {
        let Some(ip) = parse_entry(part) else { return last };
        if !is_trusted(ip) {
            return ip;
        }
        last = ip;
    }
    last
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`), as some proxies write it.
fn parse_entry(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    t.parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The address per-address limits count against: IPv4 (and IPv4-mapped IPv6) as is, IPv6
/// reduced to its first `ipv6_prefix` bits (`limits.ipv6_prefix`, default 64) — one host is
/// routinely given a whole /64, so counting single IPv6 addresses would let it rotate through
/// 2^64 fresh budgets.
pub fn limit_bucket(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(ipv6_prefix.min(128))).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let t = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(client_addr(ip("1.2.3.4"), &["9.9.9.9"], &t), ip("1.2.3.4"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["9.9.9.9, 5.5.5.5, 10.0.0.7"], &t), ip("5.5.5.5"));
        assert_eq!(client_addr(ip("10.0.0.1"), &[], &t), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["junk"], &t), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["9.9.9.9"], &[]), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["10.0.0.3, 10.0.0.2"], &t), ip("10.0.0.3"), "all trusted");
    }

    /// A proxy that adds its own header line: the client's forged first line is not believed.
    #[test]
    fn every_header_line_is_read_from_the_right() {
        let t = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "7.7.7.7"], &t), ip("7.7.7.7"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "7.7.7.7, 10.0.0.9"], &t), ip("7.7.7.7"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "10.0.0.9", "10.0.0.8"], &t), ip("6.6.6.6"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "7.7.7.7:4711"], &t), ip("7.7.7.7"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["[2001:db8::1]:80"], &t), ip("2001:db8::1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "unknown"], &t), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &["6.6.6.6", "7.7.7.7, ", ""], &t), ip("7.7.7.7"));
    }

    #[test]
    fn ipv6_is_bucketed_by_prefix() {
        assert_eq!(limit_bucket(ip("2001:db8:1:2:aaaa::1"), 64), ip("2001:db8:1:2::"));
        assert_eq!(limit_bucket(ip("2001:db8:1:2:aaaa::1"), 128), ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(limit_bucket(ip("2001:db8:1:2:aaaa::1"), 48), ip("2001:db8:1::"));
        assert_eq!(limit_bucket(ip("1.2.3.4"), 64), ip("1.2.3.4"));
        assert_eq!(limit_bucket(ip("::ffff:1.2.3.4"), 64), ip("1.2.3.4"));
    }
}
