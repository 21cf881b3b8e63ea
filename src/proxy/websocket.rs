//! WebSocket upgrades: allowed per route (`routes[].websocket`), else 426 so clients fall back
//! to SSE. An allowed upgrade becomes a tunnel ([`super::tunnel`]).

use super::respond;
use pingora::prelude::*;
use pingora_proxy::Session;

/// 426 Upgrade Required, with `Upgrade: websocket` and an OpenAI-shaped body.
pub async fn refuse_upgrade(session: &mut Session, request_id: &str) -> Result<u16> {
    let body = serde_json::json!({"error": {
        "message": "this route does not accept WebSocket upgrades; use HTTP (SSE) instead",
        "type": "invalid_request_error",
        "code": "websocket_not_allowed",
    }});
    session.set_keepalive(None);
    let extra = [("upgrade", http::HeaderValue::from_static("websocket"))];
    respond::json(session, 426, body.to_string().into_bytes(), request_id, &extra).await?;
    Ok(426)
}
