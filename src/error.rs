//! The one table from gateway errors to HTTP status and OpenAI's error body
//! `{"error":{"message","type","code"}}`. Messages never carry a key or a prompt.

use crate::keys::AuthError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("this API key may not use model \"{0}\"")]
    ModelNotAllowed(String),
    #[error("{0}")]
    ModelRequired(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("the model \"{0}\" does not exist or is not served here")]
    ModelNotFound(String),
    #[error("no stored response with this id is reachable: it is unknown, expired or belongs to another key")]
    ResponseNotFound,
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// The admission queue refused (full, or its deadline passed): 503 with `Retry-After`
    /// of the given seconds.
    #[error("{0}")]
    Overloaded(String, u64),
    #[error("internal error")]
    Internal,
    #[error("{}", .0.kind.message())]
    RateLimited(crate::limits::Refusal),
    /// Ambiguous framing (400) or an oversized header (431): see `crate::framing`.
    #[error("{}", .0.message())]
    Framing(crate::framing::Refusal),
}

impl GatewayError {
    /// (HTTP status, OpenAI `type`, OpenAI `code`)
    pub fn parts(&self) -> (u16, &'static str, &'static str) {
        match self {
            GatewayError::BadRequest(_) => (400, "invalid_request_error", "bad_request"),
            GatewayError::InvalidJson(_) => (400, "invalid_request_error", "invalid_json"),
            GatewayError::Unauthorized(e) => (
                401,
                "invalid_request_error",
                match e {
                    AuthError::Missing => "missing_api_key",
                    AuthError::Invalid => "invalid_api_key",
                    AuthError::Expired(_) => "expired_api_key",
                    AuthError::NotYetValid(_) => "api_key_not_yet_valid",
                },
            ),
            GatewayError::ModelNotAllowed(_) => (403, "permission_error", "model_not_allowed"),
            GatewayError::ModelRequired(_) => (400, "invalid_request_error", "model_required"),
            GatewayError::UnsupportedMediaType(_) => (415, "invalid_request_error", "unsupported_media_type"),
            GatewayError::NotFound(_) => (404, "invalid_request_error", "not_found"),
            GatewayError::ModelNotFound(_) => (404, "invalid_request_error", "model_not_found"),
            GatewayError::ResponseNotFound => (404, "invalid_request_error", "response_not_found"),
            GatewayError::PayloadTooLarge(_) => (413, "invalid_request_error", "request_too_large"),
            GatewayError::BadGateway(_) => (502, "upstream_error", "bad_gateway"),
            GatewayError::Unavailable(_) => (503, "upstream_error", "service_unavailable"),
            GatewayError::GatewayTimeout(_) => (504, "upstream_error", "upstream_timeout"),
            GatewayError::Overloaded(..) => (503, "server_error", "overloaded"),
            GatewayError::Internal => (500, "server_error", "internal_error"),
            GatewayError::RateLimited(r) => (429, "rate_limit_exceeded", r.kind.code()),
            GatewayError::Framing(r) if r.status() == 431 => {
                (431, "invalid_request_error", "request_header_fields_too_large")
            }
            GatewayError::Framing(_) => (400, "invalid_request_error", "invalid_request_framing"),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// The JSON body OpenAI clients parse.
    pub fn body(&self) -> Vec<u8> {
        let (_, kind, code) = self.parts();
        let v = serde_json::json!({"error": {"message": self.to_string(), "type": kind, "code": code}});
        v.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = GatewayError::ModelNotFound("x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(e.status(), 404);
        assert_eq!(GatewayError::Unauthorized(AuthError::Missing).status(), 401);
    }
}
