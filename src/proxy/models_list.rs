//! `GET …/models` in every spelling (the path is canonical by now): the list must reach the
//! client filtered to the key's globs, or not at all. Filtering inside Pingora's body filter
//! would come after the `200` header is sent (Pingora 0.9.1's proxy loop has no hook that holds
//! the answer header until the body is in; one would remove this subrequest), so a list that
//! cannot be read could only be cut off, not refused. Instead the request runs as a subrequest
//! (the same `ProxyHttp`, [`super::subrequest`]) whose answer is held whole (bounded), then
//! filtered and written here: a `200` that is not a model list becomes a 502; any other answer (401, 404,
//! the gateway's own errors) is passed on as it came.

use super::ctx::Routed;
use super::{respond, rewrite, subrequest};
use crate::error::GatewayError;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora_proxy::subrequest::BodyMode;
use pingora_proxy::Session;

/// Largest answer held for filtering; beyond it the list is refused (502).
pub const MAX_LIST: usize = 4 << 20;

#[derive(Default)]
struct Held {
    header: Option<Box<ResponseHeader>>,
    body: Vec<u8>,
    too_big: bool,
}

impl Held {
    fn take(&mut self, task: HttpTask) -> Result<Option<HttpTask>> {
        match task {
            HttpTask::Header(h, _) => self.header = Some(h),
            HttpTask::Body(Some(b), _) | HttpTask::UpgradedBody(Some(b), _) => {
                if self.body.len() + b.len() > MAX_LIST {
                    self.too_big = true;
                    self.body = Vec::new();
                } else if !self.too_big {
                    self.body.extend_from_slice(&b);
                }
            }
            HttpTask::Failed(e) => return Err(e),
            _ => {}
        }
        Ok(None) // nothing reaches the client until the whole answer is checked
    }
}

/// One answer of a subrequest, held whole; `false` when it was cut short.
async fn fetch(session: &mut Session, routed: Routed) -> Option<(Held, bool)> {
    let (sub, handle) = subrequest::spawn(session, routed, BodyMode::NoBody)?;
    let mut held = Held::default();
    let piped = pipe_subrequest(session, sub, handle, |t| held.take(t), InputBodyType::Preset(InputBody::NoBody)).await;
    if let Err(e) = &piped {
        log::debug!("model list subrequest ended: {}", e.error);
    }
    Some((held, piped.is_ok()))
}

/// Fetches the list through a subrequest and answers the client with it, filtered. A fleet's
/// list is the union of its replicas' lists ([`merged`]): replicas may serve different models
/// and adapters.
pub async fn run(session: &mut Session, routed: Routed) -> Result<()> {
    let request_id = routed.request_id.clone();
    let globs = routed.key.models.clone();
    if session.is_upgrade_req() {
        let e = GatewayError::BadRequest("the model list is not served over an upgraded connection".into());
        return respond::error(session, &e, &request_id).await;
    }
    // A compressed list could not be read: ask for it plain (the subrequest copies this header).
    session.req_header_mut().remove_header(&http::header::ACCEPT_ENCODING);
    let replicas = fleet_replicas(&routed);
    let fetched =
        if replicas.is_empty() { fetch(session, routed).await } else { merge_answers(session, replicas).await };
    let Some((mut held, piped_ok)) = fetched else {
        return respond::error(session, &GatewayError::Internal, &request_id).await;
    };
    if session.response_written().is_some() {
        return Ok(());
    }
    let refuse = |why: &str| {
        GatewayError::BadGateway(format!("the upstream's model list {why}; it is not passed on unfiltered"))
    };
    let Some(mut header) = held.header.take() else {
        return respond::error(session, &refuse("did not arrive"), &request_id).await;
    };
    if held.too_big || !piped_ok {
        return respond::error(session, &refuse("did not arrive whole (too large, or cut short)"), &request_id).await;
    }
    let body = if header.status == 200 {
        let plain = header.headers.get(http::header::CONTENT_ENCODING).is_none_or(|v| v.as_bytes() == b"identity");
        match rewrite::filter_models(&held.body, &globs).filter(|_| plain) {
            Some(b) => b,
            None => return respond::error(session, &refuse("could not be read"), &request_id).await,
        }
    } else {
        std::mem::take(&mut held.body)
    };
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(header, false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await?;
    Ok(())
}

/// The replicas' answers as one: their lists merged (a list that is not one makes it
/// unreadable: 502); when no replica answered a list, the first answer as it came.
async fn merge_answers(session: &mut Session, replicas: Vec<Routed>) -> Option<(Held, bool)> {
    let (mut lists, mut header, mut other) = (Vec::new(), None, None);
    for r in replicas {
        let Some((held, ok)) = fetch(session, r).await else { continue };
        if ok && !held.too_big && held.header.as_ref().is_some_and(|h| h.status == 200) {
            header = header.or(held.header);
            lists.push(held.body);
        } else if other.is_none() {
            other = Some((held, ok));
        }
    }
    match header {
        Some(h) => {
            let body = merged(&lists).unwrap_or_default();
            Some((Held { header: Some(h), body, too_big: false }, true))
        }
        None => Some(other.unwrap_or_default()),
    }
}

/// A fleet of more than one backend: one routed copy per usable replica, each pinned to it.
fn fleet_replicas(routed: &Routed) -> Vec<Routed> {
    let p = &routed.provider;
    if p.backends.len() < 2 {
        return Vec::new();
    }
    let now = crate::clock::now_ms();
    p.backends
        .iter()
        .filter(|b| p.usable(b, now))
        .map(|b| {
            let mut r = routed.clone();
            r.streams.pin = Some(crate::mcp::seal::Pinned {
                provider: p.name.to_string(),
                backend: b.addr,
                token: String::new(),
                key: routed.key.name.to_string(),
            });
            r
        })
        .collect()
}

/// The union of model lists (`{"object":"list","data":[…]}`), each id once (the first
/// replica's entry: an adapter keeps its `parent`); `None` when one is not a list.
pub fn merged(lists: &[Vec<u8>]) -> Option<Vec<u8>> {
    if lists.is_empty() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for body in lists {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        for m in v.get("data")?.as_array()? {
            let id = m.get("id")?.as_str()?.to_string();
            if seen.insert(id) {
                data.push(m.clone());
            }
        }
    }
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn lists_merge_each_model_once() {
        let a =
            br#"{"object":"list","data":[{"id":"base","object":"model"},{"id":"lora-a","parent":"base"}]}"#.to_vec();
        let b =
            br#"{"object":"list","data":[{"id":"base","object":"model"},{"id":"lora-b","parent":"base"}]}"#.to_vec();
        let m: serde_json::Value = serde_json::from_slice(&super::merged(&[a.clone(), b]).unwrap()).unwrap();
        let ids: Vec<&str> = m["data"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["base", "lora-a", "lora-b"]);
        assert_eq!(m["data"][2]["parent"], "base");
        assert!(super::merged(&[a, b"{}".to_vec()]).is_none());
    }
}
