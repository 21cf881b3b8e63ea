//! MCAS gateway: an edge proxy on Pingora for OpenAI-compatible model servers and MCP servers.
//!
//! The request path lives in [`proxy`], one module per step; configuration in [`config`];
//! the upstream simulator in [`sim`]; the Telegram runner in [`telegram`].

pub mod addr_text;
pub mod clock;
pub mod config;
pub mod demo;
pub mod drain;
pub mod error;
pub mod fleet;
pub mod framing;
pub mod http_path;
pub mod json_scan;
pub mod keys;
pub mod limits;
pub mod mcp;
pub mod observe;
pub mod proxy;
pub mod reload;
pub mod request_body;
pub mod routes;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod sim;
pub mod sse;
pub mod telegram;
