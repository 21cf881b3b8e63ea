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

/// The dotted quad into one buffer (at most 15 bytes), appended at once: each octet's text
/// with its dot comes whole from a table ([`OCTET_TEXT`]), four bytes written, as many kept.
/// Inlined: a call would cost a third of the work.
#[inline(always)]
fn push_ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    let mut text = [0u8; 16];
    let mut n = 0;
    for o in octets {
        let (digits, len) = OCTET_TEXT[usize::from(o)];
        if let Some(slot) = text.get_mut(n..n + 4) {
            slot.copy_from_slice(&digits);
        }
        n += usize::from(len);
    }
    out.extend_from_slice(&text[..n - 1]); // without the last dot
}

/// For each octet value, its decimal digits and a dot (padded with zeros to four bytes), and
/// how many of those bytes there are.
const OCTET_TEXT: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut o = 0;
    while o < 256 {
        let (h, d, u) = ((o / 100) as u8, (o / 10 % 10) as u8, (o % 10) as u8);
        t[o] = match o {
            0..=9 => ([b'0' + u, b'.', 0, 0], 2),
            10..=99 => ([b'0' + d, b'0' + u, b'.', 0], 3),
            _ => ([b'0' + h, b'0' + d, b'0' + u, b'.'], 4),
        };
        o += 1;
    }
    t
};

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
        // Every octet value in every place.
        for o in 0..=255u8 {
            for ip in [[o, 0, 0, 0], [1, o, 2, 3], [255, 255, o, 9], [10, 100, 200, o], [o; 4]] {
                let addr = SocketAddr::from((ip, u16::from(o) * 257));
                let mut out = Vec::new();
                push_socket_addr(&mut out, addr);
                assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
                assert_eq!(ip_string(addr.ip()), addr.ip().to_string());
            }
        }
    }
}
