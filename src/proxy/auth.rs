//! Finds the client's credential in the request and checks it against the key table.

use crate::auth::{AuthError, KeyEntry, KeyTable};
use crate::secret::Secret;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::SystemTime;

/// `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn credential(req: &RequestHeader) -> Option<Secret> {
    if let Some(v) = req.headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let key = rest.trim();
            return (!key.is_empty()).then(|| Secret::new(key));
        }
        return None;
    }
    let v = req.headers.get("x-api-key")?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| Secret::new(v))
}

pub fn authenticate(req: &RequestHeader, keys: &KeyTable) -> Result<Arc<KeyEntry>, AuthError> {
    let presented = credential(req).ok_or(AuthError::Missing)?;
    keys.check(&presented, SystemTime::now())
}
