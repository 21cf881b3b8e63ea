//! The one integration-test binary: a module per capability, a shared harness in `common`.

mod common;
mod gateway;
mod sim;
mod telegram;
