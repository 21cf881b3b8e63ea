//! Endpoints the gateway answers itself on the main listener.

use super::respond;
use pingora::prelude::*;
use pingora_proxy::Session;

/// `GET /health`: the process is up and serving. Fleet health is on the admin listener.
pub async fn try_answer(session: &mut Session, request_id: &str) -> Result<Option<u16>> {
    if session.req_header().uri.path() != "/health" {
        return Ok(None);
    }
    respond::json(session, 200, br#"{"status":"ok"}"#.to_vec(), request_id, &[]).await?;
    Ok(Some(200))
}
