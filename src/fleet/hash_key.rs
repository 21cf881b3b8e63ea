//! The key a provider hashes on: an ordered list of sources, the first one present wins.

/// One source of `providers[].hash_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// `header:NAME`: the request header's value (e.g. `x-session-id`).
    Header(http::HeaderName),
    /// `api_key`: the authenticated key's name.
    ApiKey,
    /// `body:user`: OpenAI's `user` field.
    BodyUser,
    /// `prefix`: a fingerprint of the model and the first system and user messages.
    Prefix,
    /// `client_ip`: the client's address.
    ClientIp,
    /// `model`: the request's model. With LoRA adapters each adapter's requests share a
    /// replica (bounded load spreads a busy one), so adapters are not loaded everywhere.
    Model,
}

impl HashSource {
    pub fn parse(s: &str) -> Result<HashSource, String> {
        match s {
            "api_key" => Ok(HashSource::ApiKey),
            "body:user" => Ok(HashSource::BodyUser),
            "prefix" => Ok(HashSource::Prefix),
            "client_ip" => Ok(HashSource::ClientIp),
            "model" => Ok(HashSource::Model),
            _ => match s.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(HashSource::Header)
                    .map_err(|_| format!("{name:?} is not a header name")),
                None => Err(format!("{s:?} is not one of header:NAME, api_key, body:user, prefix, model, client_ip")),
            },
        }
    }

    /// The default order: explicit session, end user, prompt prefix, then who is calling.
    pub fn defaults() -> Vec<HashSource> {
        vec![
            HashSource::Header(http::HeaderName::from_static("x-session-id")),
            HashSource::BodyUser,
            HashSource::Prefix,
            HashSource::ApiKey,
            HashSource::ClientIp,
        ]
    }
}

/// What a request offers to the hash key.
pub struct KeyInputs<'a> {
    pub headers: &'a http::HeaderMap,
    pub key_name: &'a str,
    pub user: Option<&'a str>,
    /// The prefix fingerprint, computed only if the walk over the sources reaches it.
    pub prefix: &'a dyn Fn() -> Option<[u8; 16]>,
    pub client_ip: Option<&'a str>,
    pub model: Option<&'a str>,
}

/// The bytes to hash: the first source present, tagged with its kind so that, say, a user
/// named like an IP does not share a ring point with that IP. `None` when no source is present.
pub fn key_for(sources: &[HashSource], i: &KeyInputs<'_>) -> Option<Vec<u8>> {
    for s in sources {
        let fingerprint;
        let (tag, value): (&[u8], Option<&[u8]>) = match s {
            HashSource::Header(h) => (b"h:", i.headers.get(h).map(|v| v.as_bytes()).filter(|v| !v.is_empty())),
            HashSource::ApiKey => (b"k:", Some(i.key_name.as_bytes())),
            HashSource::BodyUser => (b"u:", i.user.map(str::as_bytes).filter(|v| !v.is_empty())),
            HashSource::Prefix => {
                fingerprint = (i.prefix)();
                (b"p:", fingerprint.as_ref().map(|f| f.as_slice()))
            }
            HashSource::ClientIp => (b"i:", i.client_ip.map(str::as_bytes)),
            HashSource::Model => (b"m:", i.model.map(str::as_bytes).filter(|v| !v.is_empty())),
        };
        if let Some(v) = value {
            let mut out = Vec::with_capacity(tag.len() + v.len());
            out.extend_from_slice(tag);
            out.extend_from_slice(v);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_present_source_wins() {
        let sources: Vec<_> =
            ["header:x-session-id", "body:user", "client_ip"].iter().map(|s| HashSource::parse(s).unwrap()).collect();
        let empty = http::HeaderMap::new();
        let mut with_session = http::HeaderMap::new();
        with_session.insert("x-session-id", "s1".parse().unwrap());
        let none = || None;
        let mut i = KeyInputs {
            headers: &empty,
            key_name: "alice",
            user: None,
            prefix: &none,
            client_ip: Some("1.2.3.4"),
            model: None,
        };
        assert_eq!(key_for(&sources, &i).unwrap(), b"i:1.2.3.4");
        i.user = Some("bob");
        assert_eq!(key_for(&sources, &i).unwrap(), b"u:bob");
        i.headers = &with_session;
        assert_eq!(key_for(&sources, &i).unwrap(), b"h:s1");
        assert!(key_for(&[HashSource::Prefix], &i).is_none());
        assert!(key_for(&[HashSource::Model], &i).is_none());
        i.model = Some("lora-a");
        assert_eq!(key_for(&[HashSource::parse("model").unwrap()], &i).unwrap(), b"m:lora-a");
        assert!(HashSource::parse("cookie").is_err());
        assert!(HashSource::parse("header:bad name").is_err());
    }
}
