//! Draining on SIGTERM or graceful upgrade. Pingora stops accepting at once, waits
//! `server.grace_period`, then stops its runtimes, which drops every connection still open.
//! Connections that speak a protocol of their own (WebSocket tunnels) should rather be told
//! goodbye: this service announces the end of the grace period shortly before it comes, so
//! that tunnels send close frames (1001 Going Away) while they still can.
//!
//! Pingora's grace period is a plain sleep of the main thread (`Server::run` in
//! vendor/pingora-core/src/server/mod.rs), whatever is still open. So a stop or a restart of an
//! idle gateway took the whole period (30 s by default), refusing connections all along. The
//! client connections are counted here ([`Drain::hold`], held by `proxy::connection_gate` for
//! each connection's life): once none is open, and no sooner than [`SETTLE`] after the signal,
//! the process writes out its access log and exits 0 without waiting out the period. A Pingora
//! patch letting the application end the period would do the same inside `Server::run`; the
//! gateway does not need one, as nothing else runs after the period but the runtimes' stop.

use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long after the shutdown signal connections may still show up: Pingora gives a request
/// on a connection accepted just before the listener stopped (or on an idle keep-alive one) 2 s
/// to arrive (`SHUTDOWN_READ_GRACE`, vendor/pingora-proxy/src/lib.rs).
pub const SETTLE: Duration = Duration::from_secs(2);

/// How often the count of open connections is read while draining.
const POLL: Duration = Duration::from_millis(100);

/// Tells long-lived connections that the gateway is about to stop.
#[derive(Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
    /// How long before the end of the grace period connections are told.
    pub notice: Duration,
    /// Client connections open now.
    open: Arc<AtomicUsize>,
}

/// One open client connection, counted until dropped.
pub struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// `grace`: Pingora's grace period (whole seconds).
    pub fn new(grace: Duration) -> Self {
        let (tx, _) = watch::channel(false);
        Drain { tx, notice: notice_for(grace), open: Default::default() }
    }

    /// Counts a client connection as open until the guard is dropped.
    pub fn hold(&self) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.open.clone())
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once the gateway is about to stop (at once if it already is).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn announce(&self) {
        self.tx.send_replace(true);
    }
}

/// Up to 2 s before the end of the grace period (half of it when it is shorter than 4 s),
/// so that close handshakes fit in before the runtime stops.
fn notice_for(grace: Duration) -> Duration {
    (grace / 2).min(Duration::from_secs(2))
}

/// Waits for Pingora's shutdown signal, then announces the drain `notice` before the end of
/// the grace period.
pub struct DrainService {
    pub drain: Drain,
    pub grace: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let signalled = tokio::time::Instant::now();
        let wait = self.grace.saturating_sub(self.drain.notice);
        log::info!("draining: tunnels are told to close in {wait:?} (grace period {:?})", self.grace);
        let notice_at = signalled + wait;
        while tokio::time::Instant::now() < notice_at {
            self.exit_if_drained(signalled);
            tokio::time::sleep_until(notice_at.min(tokio::time::Instant::now() + POLL)).await;
        }
        self.drain.announce();
        // Tunnels closing after the notice end the period early too; Pingora ends it otherwise.
        loop {
            self.exit_if_drained(signalled);
            tokio::time::sleep(POLL).await;
        }
    }
}

impl DrainService {
    /// Ends the process when no client connection is open any more, [`SETTLE`] after the signal.
    fn exit_if_drained(&self, signalled: tokio::time::Instant) {
        if signalled.elapsed() < SETTLE || self.drain.open() > 0 {
            return;
        }
        log::info!("drained: no client connection open after {:?}; exiting", signalled.elapsed());
        crate::server::exit_served();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_fits_in_the_grace_period() {
        assert_eq!(notice_for(Duration::from_secs(30)), Duration::from_secs(2));
        assert_eq!(notice_for(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(notice_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn held_connections_are_counted_until_dropped() {
        let d = Drain::new(Duration::from_secs(30));
        let a = d.hold();
        let b = d.clone().hold();
        assert_eq!(d.open(), 2);
        drop(a);
        assert_eq!(d.open(), 1);
        drop(b);
        assert_eq!(d.open(), 0);
    }

    #[tokio::test]
    async fn subscribers_learn_of_the_drain() {
        let d = Drain::new(Duration::from_secs(1));
        let mut rx = d.subscribe();
        assert!(!*rx.borrow());
        d.announce();
        rx.changed().await.unwrap();
        assert!(*rx.borrow());
        assert!(*d.subscribe().borrow(), "late subscribers see it too");
    }
}
