//! First step of every request: refuse framing another hop could read differently, and
//! headers larger than the gateway carries (`crate::framing`), before anything else looks at
//! the request. The connection is closed after the answer: where one request ends is exactly
//! what is in doubt.

use crate::error::GatewayError;
use crate::observe::metrics::metrics;
use pingora_proxy::Session;

pub fn check(session: &mut Session) -> Result<(), GatewayError> {
    let downstream = session.as_downstream();
    let verdict = if downstream.as_http1().is_some() {
        crate::framing::check_h1(&downstream.to_h1_raw())
    } else {
        let headers = &session.req_header().headers;
        // Field size as HPACK counts it (name + value + 32); 4 is enough for a limit this coarse.
        let bytes = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        crate::framing::check_size(headers.len(), bytes)
    };
    verdict.map_err(|r| {
        if let Some(m) = metrics() {
            m.malformed_requests.with_label_values(&[r.reason()]).inc();
        }
        session.set_keepalive(None);
        GatewayError::Framing(r)
    })
}
