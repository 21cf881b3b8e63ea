//! MCP behind a balancer without shared state: the backend is chosen first, and its identity
//! is sealed (authenticated encryption) into what the client carries back — the
//! `Mcp-Session-Id` of the streamable-HTTP transport (`src/proxy/mcp_session.rs`, the request step that pins and unseals it) and the message URL of the
//! legacy HTTP+SSE transport's `endpoint` event ([`endpoint`]). Any gateway instance with the
//! same key can unseal it, so affinity survives restarts and several instances.

pub mod endpoint;
pub mod seal;
