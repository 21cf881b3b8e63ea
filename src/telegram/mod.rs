//! `mcas-telegram`: the Telegram channel runner.
//!
//! Long-polls the Bot API (or takes webhooks), answers each chat through the gateway's
//! streamed `/v1/chat/completions`, and reports its health on `/status`. Module map, in the
//! order an update travels: [`bot_api`] receives it, [`runner`] journals ([`state`]) and
//! dispatches it, [`chat`] decides, [`answer`] asks the [`gateway`], [`reply`] shows the
//! stream ([`split`], [`render`]), [`status`] and [`metrics`] report.

pub mod answer;
pub mod bot_api;
pub mod bot_types;
pub mod chat;
pub mod config;
mod config_file;
pub mod gateway;
pub mod metrics;
pub mod render;
pub mod reply;
pub mod retry;
pub mod runner;
pub mod split;
pub mod state;
pub mod status;
pub mod webhook;

pub use config::Config;
pub use runner::run;
