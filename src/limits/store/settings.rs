//! `limits.store`, `limits.store_cluster`, `limits.on_store_error`, `limits.store_timeout`:
//! where the per-key counters live and what happens when that place cannot be reached.

use crate::secret::Secret;
use std::fmt;
use std::time::Duration;

pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

/// What a request meets while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Count on this instance alone (each instance then admits up to the full limit).
    Local,
    /// Refuse with 503.
    Closed,
}

impl OnStoreError {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(OnStoreError::Local),
            "closed" => Some(OnStoreError::Closed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Closed => "closed",
        }
    }
}

/// A Redis URL. It may carry a password (expanded from `${ENV}`), so `Debug` shows only
/// the scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(Secret);

impl StoreUrl {
    /// Checks the shape without connecting. Messages never repeat the URL.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let u = url::Url::parse(s).map_err(|_| "is neither `local` nor a URL")?;
        if u.scheme() != "redis" && u.scheme() != "rediss" {
            return Err("must be `local`, or a URL whose scheme is redis:// or rediss://");
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err("has no host");
        }
        redis::Client::open(s).map_err(|_| "is not a Redis URL the client can use")?;
        Ok(StoreUrl(Secret::new(s)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The password in the URL, if any, for the redacting logger.
    pub fn password(&self) -> Option<String> {
        let u = url::Url::parse(self.0.expose()).ok()?;
        u.password().map(percent_decode)
    }

    pub fn is_tls(&self) -> bool {
        self.0.expose().starts_with("rediss://")
    }
}

fn percent_decode(p: &str) -> String {
    url::form_urlencoded::parse(format!("p={p}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(self.0.expose()) {
            Ok(u) => write!(f, "{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port().unwrap_or(6379)),
            Err(_) => f.write_str("redis://?"),
        }
    }
}

/// The compiled store settings; `url: None` is `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub url: Option<StoreUrl>,
    pub cluster: bool,
    pub on_error: OnStoreError,
    pub timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { url: None, cluster: false, on_error: OnStoreError::Local, timeout: DEFAULT_STORE_TIMEOUT }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let u = StoreUrl::parse("redis://:s3cr%40t-pass@cache.internal:6380/2").unwrap();
        let shown = format!("{u:?}");
        assert_eq!(shown, "redis://cache.internal:6380");
        assert_eq!(u.password().as_deref(), Some("s3cr@t-pass"));
    }

    #[test]
    fn only_redis_schemes() {
        assert!(StoreUrl::parse("http://x:1").is_err());
        assert!(StoreUrl::parse("redis").is_err());
        assert!(StoreUrl::parse("rediss://h:6379").unwrap().is_tls());
    }
}
