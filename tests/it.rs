//! The one integration-test binary: a module per capability, a shared harness in `common`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod common;
mod compression;
mod fleet;
mod framing_paths;
mod gateway;
mod hygiene;
mod limits;
mod limits_store;
mod mcp;
mod openai_sdk;
mod policy;
mod secrets;
mod sim;
mod streams;
mod streams_bench;
mod telegram;
mod tunnel;
