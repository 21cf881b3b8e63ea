//! Response bodies and the OpenAI error shape shared by every endpoint.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Every response body. The error type is `io::Error` because a streamed body that fails makes
/// hyper cut the connection, which is how `close` failures are injected.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A response with a body and a content type.
pub fn with_body(status: StatusCode, content_type: HeaderValue, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    resp
}

pub fn json(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    with_body(status, JSON, full(bytes))
}

/// `{"error":{"message":..,"type":..,"code":..}}`, OpenAI's error shape.
pub fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": code }
    });
    json(status, body.to_string())
}

/// An error for a status chosen by a client (`x-sim-status`) or by failure injection.
pub fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    error(status, message, kind, "simulated_error")
}

pub fn bad_request(message: &str) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        "bad_request",
    )
}
