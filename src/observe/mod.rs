//! Observability: metrics (one registry), the JSON access log, the admin listener.

pub mod access_log;
pub mod admin;
pub mod metrics;
