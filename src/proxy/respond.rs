//! Answers the gateway writes itself: JSON bodies with Content-Type, Content-Length and the
//! request id, keeping the connection usable unless the request body was left unread.

use crate::error::GatewayError;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

pub async fn json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    request_id: &str,
    extra: &[(&'static str, HeaderValue)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    if !request_id.is_empty() {
        h.insert_header(&super::header_names::REQUEST_ID, request_id)?;
    }
    for (k, v) in extra {
        super::header_names::insert(&mut h, k, v.clone())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body.into()), true).await?;
    Ok(())
}

/// Writes `err` as an OpenAI error. When the request body was not read (or only partly),
/// the connection is closed afterwards rather than draining an upload nobody wants.
pub async fn error(session: &mut Session, err: &GatewayError, request_id: &str) -> Result<()> {
    error_with(session, err, request_id, Vec::new()).await
}

/// [`error`] with extra headers (`x-ratelimit-*`, `Retry-After`).
pub async fn error_with(
    session: &mut Session,
    err: &GatewayError,
    request_id: &str,
    mut extra: Vec<(&'static str, HeaderValue)>,
) -> Result<()> {
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    if let GatewayError::Unauthorized(_) = err {
        extra.push(("www-authenticate", HeaderValue::from_static("Bearer")));
    }
    json(session, err.status(), err.body(), request_id, &extra).await
}
