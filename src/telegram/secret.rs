//! Secrets as a type: the bot token and the gateway key never reach a log line, an error,
//! `/status` or a metric through `Debug`/`Display` by accident.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to read the value; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (the webhook secret arrives from the network).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == candidate.len() && bool::from(self.0.as_bytes().ct_eq(candidate))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_compare_works() {
        let s = Secret::new("123:abc");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(s.matches(b"123:abc"));
        assert!(!s.matches(b"123:abd"));
        assert!(!s.matches(b"123"));
    }
}
