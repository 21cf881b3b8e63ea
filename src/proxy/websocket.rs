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

/// An `Upgrade` offer for anything but WebSocket (`h2c` from `curl --http2`, …) is declined
/// the way RFC 9110 allows, by ignoring it: the request goes on as plain HTTP/1.1 and the
/// offer is not forwarded. Returns whether an offer was removed.
pub fn decline_other_upgrades(req: &mut pingora_http::RequestHeader) -> bool {
    let Some(offer) = req.headers.get(http::header::UPGRADE) else { return false };
    let websocket = offer
        .to_str()
        .map(|v| v.split(',').any(|p| p.trim().split('/').next().is_some_and(|n| n.eq_ignore_ascii_case("websocket"))))
        .unwrap_or(false);
    if websocket {
        return false;
    }
    req.remove_header(&http::header::UPGRADE);
    req.remove_header("http2-settings");
    let kept: Option<String> = req.headers.get(http::header::CONNECTION).and_then(|v| v.to_str().ok()).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|t| {
                !t.is_empty() && !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings")
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    match kept {
        Some(k) if !k.is_empty() => {
            let _ = req.insert_header(http::header::CONNECTION, k);
        }
        _ => {
            req.remove_header(&http::header::CONNECTION);
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::decline_other_upgrades;
    use pingora_http::RequestHeader;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/v1/models", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn h2c_offers_are_dropped_websocket_kept() {
        let mut r = req(&[
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ]);
        assert!(decline_other_upgrades(&mut r));
        assert!(r.headers.get("upgrade").is_none() && r.headers.get("http2-settings").is_none());
        assert!(r.headers.get("connection").is_none());
        let mut r = req(&[("upgrade", "h2c"), ("connection", "keep-alive, Upgrade")]);
        assert!(decline_other_upgrades(&mut r));
        assert_eq!(r.headers["connection"], "keep-alive");
        let mut r = req(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert!(!decline_other_upgrades(&mut r));
        assert_eq!(r.headers["upgrade"], "websocket");
        let mut r = req(&[("upgrade", "foo/1, WebSocket")]);
        assert!(!decline_other_upgrades(&mut r));
        assert!(!decline_other_upgrades(&mut req(&[])));
    }
}
