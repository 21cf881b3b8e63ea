//! The header names the gateway writes on every request, checked once. Inserting a name given
//! as a string makes Pingora's header map parse it, copy it, and (for a standard name) copy
//! it again for the case map, on every request; a [`KnownHeaderName`] (vendor/patches/0012)
//! carries both forms. The wire bytes are the same: each name is written in the case given.

use http::HeaderValue;
use pingora::prelude::*;
use pingora_http::{KnownHeaderName, RequestHeader, ResponseHeader};

pub static AUTHORIZATION: KnownHeaderName = KnownHeaderName::from_static("authorization");
pub static ACCEPT_ENCODING: KnownHeaderName = KnownHeaderName::from_static("accept-encoding");
pub static REQUEST_ID: KnownHeaderName = KnownHeaderName::from_static("x-request-id");
pub static FORWARDED_FOR: KnownHeaderName = KnownHeaderName::from_static("x-forwarded-for");
pub static FORWARDED_PROTO: KnownHeaderName = KnownHeaderName::from_static("x-forwarded-proto");
pub static RETRY_AFTER: KnownHeaderName = KnownHeaderName::from_static("retry-after");

/// `Host`, title-cased as a [`http::header::HOST`] name is written (`None` cannot happen: the
/// name is valid; [`insert_host`] then takes the slower path).
static HOST: once_cell::sync::Lazy<Option<KnownHeaderName>> =
    once_cell::sync::Lazy::new(|| KnownHeaderName::new("Host").ok());

/// Sets `Host` as `insert_header(http::header::HOST, value)` does, without parsing the name.
pub fn insert_host(h: &mut RequestHeader, value: impl TryInto<HeaderValue>) -> Result<()> {
    match HOST.as_ref() {
        Some(k) => h.insert_header(k, value),
        None => h.insert_header(http::header::HOST, value),
    }
}

/// The `x-ratelimit-*` names `crate::limits::Snapshot::headers` gives, in its order.
pub static RATE_LIMIT: [KnownHeaderName; 6] = [
    KnownHeaderName::from_static("x-ratelimit-limit-requests"),
    KnownHeaderName::from_static("x-ratelimit-remaining-requests"),
    KnownHeaderName::from_static("x-ratelimit-reset-requests"),
    KnownHeaderName::from_static("x-ratelimit-limit-tokens"),
    KnownHeaderName::from_static("x-ratelimit-remaining-tokens"),
    KnownHeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Every name the gateway adds to an answer as an encoded line ([`REQUEST_ID`],
/// [`RATE_LIMIT`]) starts with this, so an upstream field that does not is none of them:
/// one comparison per upstream field finds that there is nothing to replace.
pub const OWN_ANSWER_PREFIX: &str = "x-r";

/// The checked form of a name the gateway writes often; `None` for the others.
pub fn known(name: &str) -> Option<&'static KnownHeaderName> {
    if name == RETRY_AFTER.name().as_str() {
        return Some(&RETRY_AFTER);
    }
    if name == REQUEST_ID.name().as_str() {
        return Some(&REQUEST_ID);
    }
    RATE_LIMIT.iter().find(|k| k.name().as_str() == name)
}

/// Inserts `name` through its checked form when it has one.
pub fn insert(h: &mut ResponseHeader, name: &'static str, value: HeaderValue) -> Result<()> {
    match known(name) {
        Some(k) => h.insert_header(k, value),
        None => h.insert_header(name, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rate_limit_name_the_limits_give_is_known() {
        let limits = crate::limits::KeyLimits { rpm: Some(10), tpm: Some(100), ..Default::default() };
        let snap = crate::limits::KeyState::default().snapshot(&limits, 0);
        let names: Vec<&str> = snap.headers().iter().map(|h| h.0).collect();
        assert_eq!(names.len(), 6);
        for n in names {
            assert_eq!(known(n).map(|k| k.name().as_str()), Some(n));
        }
        assert!(known("x-other").is_none());
    }

    #[test]
    fn every_name_added_to_an_answer_has_the_prefix() {
        for k in std::iter::once(&REQUEST_ID).chain(&RATE_LIMIT) {
            assert!(k.name().as_str().starts_with(OWN_ANSWER_PREFIX), "{k:?}");
        }
    }

    #[test]
    fn host_is_written_as_the_standard_name_is() {
        assert!(HOST.is_some());
        let mut a = RequestHeader::build("GET", b"/", None).unwrap();
        let mut b = RequestHeader::build("GET", b"/", None).unwrap();
        a.append_header("host", "old").unwrap();
        b.append_header("host", "old").unwrap();
        insert_host(&mut a, "example.com:8000").unwrap();
        b.insert_header(http::header::HOST, "example.com:8000").unwrap();
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        a.header_to_h1_wire(&mut wa);
        b.header_to_h1_wire(&mut wb);
        assert_eq!(wa, wb);
        assert_eq!(wa, b"Host: example.com:8000\r\n");
    }

    #[test]
    fn a_known_name_is_written_as_a_string_name_would_be() {
        let mut a = ResponseHeader::build(200, None).unwrap();
        let mut b = ResponseHeader::build(200, None).unwrap();
        insert(&mut a, "x-ratelimit-reset-tokens", HeaderValue::from_static("1s")).unwrap();
        b.insert_header("x-ratelimit-reset-tokens", "1s").unwrap();
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        a.header_to_h1_wire(&mut wa);
        b.header_to_h1_wire(&mut wb);
        assert_eq!(wa, wb);
        assert_eq!(wa, b"x-ratelimit-reset-tokens: 1s\r\n");
    }
}
