//! Any method on a path ending in `/echo`: reports exactly what arrived, so tests can see what
//! a gateway forwarded. The body is hashed as it streams in (no size limit, nothing buffered).

use std::collections::BTreeMap;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::replica::Replica;
use super::response::{self, Body};

pub async fn handle(r: &Replica, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    len += data.len() as u64;
                }
            }
            Err(e) => return response::bad_request(&format!("cannot read the body: {e}")),
        }
    }
    // Names arrive lowercased from hyper; repeated headers are joined like HTTP allows.
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let out = serde_json::json!({
        "replica": String::from_utf8_lossy(r.name.as_bytes()),
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
    });
    response::json(StatusCode::OK, out.to_string())
}
