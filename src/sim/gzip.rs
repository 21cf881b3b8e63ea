//! `--force-gzip`: an upstream that compresses whatever the client asked for. Each chunk is
//! compressed and flushed as it comes, so a streamed answer stays streamed.

use std::io::{self, Write};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::response::Body;

/// `resp` gzipped (`Content-Encoding: gzip`, no `Content-Length`); upgrades and bodiless
/// answers are left alone.
pub fn force(resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS || status == StatusCode::NO_CONTENT {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let state = Some((body, GzEncoder::new(Vec::new(), Compression::fast())));
    let frames = futures_util::stream::unfold(state, |state| async move {
        let (mut body, mut enc) = state?;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if let Err(e) = enc.write_all(&data).and_then(|()| enc.flush()) {
                        return Some((Err(e), None));
                    }
                    let out = std::mem::take(enc.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Frame::data(Bytes::from(out))), Some((body, enc))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let last: io::Result<Vec<u8>> = enc.finish();
                    return Some((last.map(|v| Frame::data(Bytes::from(v))), None));
                }
            }
        }
    });
    Response::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}
