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

/// Fetches the list through a subrequest and answers the client with it, filtered.
pub async fn run(session: &mut Session, routed: Routed) -> Result<()> {
    let request_id = routed.request_id.clone();
    let globs = routed.key.models.clone();
    if session.is_upgrade_req() {
        let e = GatewayError::BadRequest("the model list is not served over an upgraded connection".into());
        return respond::error(session, &e, &request_id).await;
    }
    // A compressed list could not be read: ask for it plain (the subrequest copies this header).
    session.req_header_mut().remove_header(&http::header::ACCEPT_ENCODING);
    let Some((sub, handle)) = subrequest::spawn(session, routed, BodyMode::NoBody) else {
        return respond::error(session, &GatewayError::Internal, &request_id).await;
    };
    let mut held = Held::default();
    let piped = pipe_subrequest(session, sub, handle, |t| held.take(t), InputBodyType::Preset(InputBody::NoBody)).await;
    if let Err(e) = &piped {
        log::debug!("model list subrequest ended: {}", e.error);
    }
    if session.response_written().is_some() {
        return Ok(());
    }
    let refuse = |why: &str| {
        GatewayError::BadGateway(format!("the upstream's model list {why}; it is not passed on unfiltered"))
    };
    let Some(mut header) = held.header.take() else {
        return respond::error(session, &refuse("did not arrive"), &request_id).await;
    };
    if held.too_big || piped.is_err() {
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
