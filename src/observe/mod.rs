//! Observability: metrics (one registry), the JSON access log, the admin listener, and the
//! process logger that keeps credentials out of every log line.

pub mod access_log;
pub mod admin;
pub mod bound;
pub mod daily_file;
pub mod dashboard;
pub mod inference_metrics;
pub mod logging;
pub mod metrics;
pub mod redact;
