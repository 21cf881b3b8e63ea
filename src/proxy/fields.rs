//! Which of the client's fields admission looks up are present, found in one pass over the
//! request's names when it arrives: most are absent on most requests, and a lookup of each
//! (`HeaderMap::get`) hashes the name and probes the map. A field marked absent here is not
//! looked up; one marked present is read as before. Nothing adds one of these fields to the
//! client's request during admission (`websocket::decline_other_upgrades` only removes
//! `Upgrade`, which the readers then find absent by their own lookup), so absent stays absent.

use http::header::{self, HeaderName};
use pingora_http::RequestHeader;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Present {
    pub request_id: bool,
    pub upgrade: bool,
    pub expect: bool,
    pub accept: bool,
    pub content_encoding: bool,
}

impl Present {
    pub fn read(req: &RequestHeader) -> Self {
        let mut p = Present::default();
        for name in req.headers.keys() {
            if *name == header::CONTENT_TYPE
                || *name == header::CONTENT_LENGTH
                || *name == header::AUTHORIZATION
                || *name == header::HOST
            {
                // The usual fields first: looked up anyway.
            } else if *name == header::ACCEPT {
                p.accept = true;
            } else if *name == header::UPGRADE {
                p.upgrade = true;
            } else if *name == header::EXPECT {
                p.expect = true;
            } else if *name == header::CONTENT_ENCODING {
                p.content_encoding = true;
            } else if *name == REQUEST_ID {
                p.request_id = true;
            }
        }
        p
    }
}

/// `Session::is_upgrade_req` (vendor/pingora-core/src/protocols/http/server.rs): never an
/// upgrade without an `Upgrade` field.
pub fn is_upgrade_req(session: &pingora_proxy::Session, present: &Present) -> bool {
    present.upgrade && session.is_upgrade_req()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_field_is_found_in_any_case_and_among_others() {
        let names = ["x-request-id", "upgrade", "expect", "accept", "content-encoding"];
        let others = ["host", "content-type", "content-length", "authorization", "x-sim-tokens", "x-request-idx", "te"];
        for mask in 0..(1u32 << names.len()) {
            let mut r = RequestHeader::build("POST", b"/", None).unwrap();
            for o in others {
                r.append_header(o, "v").unwrap();
            }
            for (i, n) in names.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    r.append_header(n.to_ascii_uppercase(), "v").unwrap();
                }
            }
            let p = Present::read(&r);
            // As a lookup of each would find.
            let found = |n: &str| r.headers.get(n).is_some();
            assert_eq!([p.request_id, p.upgrade, p.expect, p.accept, p.content_encoding], names.map(found), "{mask:b}");
        }
    }
}
