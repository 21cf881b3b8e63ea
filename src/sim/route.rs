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
    // vLLM's other endpoints (src/sim/surface.rs, src/sim/responses.rs).
    Embeddings,
    Responses,
    Audio,
    Rerank,
    Score,
    Tokenize,
    Detokenize,
    NotFound,
}

impl Endpoint {
    /// Every variant, in [`Endpoint::index`] order.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Models,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Echo,
        Endpoint::Ws,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Audio,
        Endpoint::Rerank,
        Endpoint::Score,
        Endpoint::Tokenize,
        Endpoint::Detokenize,
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
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Audio => "audio",
            Endpoint::Rerank => "rerank",
            Endpoint::Score => "score",
            Endpoint::Tokenize => "tokenize",
            Endpoint::Detokenize => "detokenize",
            Endpoint::NotFound => "not_found",
        }
    }

    /// OpenAI endpoints are the ones `--api-key` guards (besides any path containing `/v1/`).
    pub fn is_openai(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions | Endpoint::Models) || self.is_surface()
    }

    /// Answered by `surface.rs` (JSON bodies, and the audio forms).
    pub fn is_surface(self) -> bool {
        matches!(
            self,
            Endpoint::Embeddings
                | Endpoint::Audio
                | Endpoint::Rerank
                | Endpoint::Score
                | Endpoint::Tokenize
                | Endpoint::Detokenize
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
    } else if let Some(e) = surface(post, path) {
        e
    } else if path.contains("/v1/responses") {
        Endpoint::Responses
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

/// vLLM's POST endpoints besides completions; rerank and score are served with and without
/// `/v1` (and rerank as `/v2/rerank`), tokenize and detokenize without.
fn surface(post: bool, path: &str) -> Option<Endpoint> {
    if !post {
        return None;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    Some(match last {
        "embeddings" => Endpoint::Embeddings,
        "transcriptions" | "translations"
            if path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations") =>
        {
            Endpoint::Audio
        }
        "rerank" => Endpoint::Rerank,
        "score" => Endpoint::Score,
        "tokenize" => Endpoint::Tokenize,
        "detokenize" => Endpoint::Detokenize,
        _ => return None,
    })
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
        assert_eq!(classify(&post, "/openai/v1/chat/completions"), Endpoint::Chat);
        assert_eq!(classify(&post, "/v1/completions"), Endpoint::Completions);
        assert_eq!(classify(&get, "/v1/completions"), Endpoint::NotFound);
        assert_eq!(classify(&get, "/base/v1/models/"), Endpoint::Models);
        assert_eq!(classify(&Method::PUT, "/x/echo"), Endpoint::Echo);
        assert_eq!(classify(&get, "/health"), Endpoint::Health);
        assert_eq!(classify(&get, "/v1/ws"), Endpoint::Ws);
        assert_eq!(classify(&get, "/nope"), Endpoint::NotFound);
        assert_eq!(classify(&post, "/v1/embeddings"), Endpoint::Embeddings);
        assert_eq!(classify(&post, "/v2/rerank"), Endpoint::Rerank);
        assert_eq!(classify(&post, "/tokenize"), Endpoint::Tokenize);
        assert_eq!(classify(&post, "/v1/audio/translations"), Endpoint::Audio);
        assert_eq!(classify(&get, "/v1/responses/resp_1"), Endpoint::Responses);
        assert_eq!(classify(&post, "/v1/responses/resp_1/cancel"), Endpoint::Responses);
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }
}
