//! The connection to Redis (one node through the client's `ConnectionManager`, or a Redis
//! Cluster through its cluster client; both reconnect by themselves) and the store's health:
//! an outage is logged once when it starts and once when it ends, every failed call is
//! counted (`mcas_limit_store_errors_total`), and while it lasts requests do not wait for
//! the store at all.

use super::settings::StoreSettings;
use crate::observe::metrics::metrics;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, Script};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// A single node's manager connects lazily; a cluster client must reach a node now.
    /// Must run inside a Tokio runtime that lives as long as the store (the client's
    /// driver tasks are spawned on it).
    pub async fn open(s: &StoreSettings) -> RedisResult<Conn> {
        let Some(url) = &s.url else {
            return Err((redis::ErrorKind::Client, "no store URL").into());
        };
        // The client's own timeouts sit a little above ours: ours decides, theirs frees
        // the connection's resources.
        let t = s.timeout.max(Duration::from_millis(200));
        if s.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![url.expose()])
                .connection_timeout(t)
                .response_timeout(t)
                .retries(1)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(url.expose())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client, config)?))
        }
    }

    /// Runs `script` on one key (all of a script's keys share a slot) with `args`.
    pub async fn script<T: FromRedisValue>(&self, script: &Script, key: &str, args: &[String]) -> RedisResult<T> {
        let mut inv = script.key(key);
        for a in args {
            inv.arg(a);
        }
        let inv = &inv;
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
        }
    }

    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// Why a call to the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within limits.store_timeout")]
    Timeout,
    #[error("not connected")]
    NotConnected,
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// Up or down, with the transitions logged once each.
#[derive(Debug, Default)]
pub struct Health {
    down: AtomicBool,
}

impl Health {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    pub fn failed(&self, e: &StoreError, mode: &str) {
        if let Some(m) = metrics() {
            m.limit_store_errors.inc();
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            if let Some(m) = metrics() {
                m.limit_store_up.set(0);
            }
            // The redacting logger removes the URL's password (registered at start-up).
            log::warn!("limits store unreachable ({e}); limits.on_store_error: {mode} until it answers again");
        }
    }

    pub fn ok(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            log::info!("limits store answers again: counting shared");
        }
        if let Some(m) = metrics() {
            m.limit_store_up.set(1);
        }
    }
}
