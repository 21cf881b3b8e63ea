//! Which endpoint a request is for. Paths match by suffix, so a base path in front
//! (`/openai/v1/chat/completions`) routes like `/v1/chat/completions`.

use http::Method;

/// The endpoints the simulator answers; also the `endpoint` label of the request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Models,
    Health,
    Metrics,
    Echo,
    Ws,
    NotFound,
}

impl Endpoint {
    /// Every variant, in [`Endpoint::index`] order.
    pub const ALL: [Endpoint; 8] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Models,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Echo,
        Endpoint::Ws,
        Endpoint::NotFound,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Models => "models",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Echo => "echo",
            Endpoint::Ws => "ws",
            Endpoint::NotFound => "not_found",
        }
    }

    /// OpenAI endpoints are the ones `--api-key` guards (besides any path containing `/v1/`).
    pub fn is_openai(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Models
        )
    }
}

/// Classifies by method and path suffix. A trailing slash is ignored.
pub fn classify(method: &Method, path: &str) -> Endpoint {
    let path = path.strip_suffix('/').unwrap_or(path);
    let post = method == Method::POST;
    let get = method == Method::GET;
    if path.ends_with("/echo") {
        Endpoint::Echo
    } else if post && path.ends_with("/chat/completions") {
        Endpoint::Chat
    } else if post && path.ends_with("/completions") {
        Endpoint::Completions
    } else if get && path.ends_with("/models") {
        Endpoint::Models
    } else if get && path == "/health" {
        Endpoint::Health
    } else if get && path == "/metrics" {
        Endpoint::Metrics
    } else if get && path.ends_with("/ws") {
        Endpoint::Ws
    } else {
        Endpoint::NotFound
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_suffix_and_method() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(classify(&post, "/v1/chat/completions"), Endpoint::Chat);
        assert_eq!(
            classify(&post, "/openai/v1/chat/completions"),
            Endpoint::Chat
        );
        assert_eq!(classify(&post, "/v1/completions"), Endpoint::Completions);
        assert_eq!(classify(&get, "/v1/completions"), Endpoint::NotFound);
        assert_eq!(classify(&get, "/base/v1/models/"), Endpoint::Models);
        assert_eq!(classify(&Method::PUT, "/x/echo"), Endpoint::Echo);
        assert_eq!(classify(&get, "/health"), Endpoint::Health);
        assert_eq!(classify(&get, "/v1/ws"), Endpoint::Ws);
        assert_eq!(classify(&get, "/nope"), Endpoint::NotFound);
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }
}
