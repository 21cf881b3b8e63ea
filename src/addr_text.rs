//! Addresses as text on the request path, written digit by digit: `Display` for an IPv4
//! address goes through the formatting machinery once per octet, a measurable part of the
//! gateway's work per request (docs/benchmarks.md). The text is exactly `Display`'s.

use std::net::{IpAddr, SocketAddr};

/// Appends `addr` as `Display` writes it (`a.b.c.d:port`, `[v6]:port`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            push_ipv4(out, a.ip().octets());
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{addr}");
        }
    }
}

/// `ip.to_string()`.
pub fn ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            push_ipv4(&mut out, v4.octets());
            String::from_utf8(out).unwrap_or_else(|_| ip.to_string())
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

fn push_ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(itoa::Buffer::new().format(o).as_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_displays() {
        for a in
            ["0.0.0.0:0", "127.0.0.1:8000", "10.20.30.40:65535", "255.255.255.255:1", "[::1]:443", "[2001:db8::7]:80"]
        {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
            assert_eq!(ip_string(addr.ip()), addr.ip().to_string());
        }
    }
}
