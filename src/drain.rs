//! Draining on SIGTERM or graceful upgrade. Pingora stops accepting at once, waits
//! `server.grace_period`, then stops its runtimes, which drops every connection still open.
//! Connections that speak a protocol of their own (WebSocket tunnels) should rather be told
//! goodbye: this service announces the end of the grace period shortly before it comes, so
//! that tunnels send close frames (1001 Going Away) while they still can.

use pingora::server::ShutdownWatch;
use std::time::Duration;
use tokio::sync::watch;

/// Tells long-lived connections that the gateway is about to stop.
#[derive(Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
    /// How long before the end of the grace period connections are told.
    pub notice: Duration,
}

impl Drain {
    /// `grace`: Pingora's grace period (whole seconds).
    pub fn new(grace: Duration) -> Self {
        let (tx, _) = watch::channel(false);
        Drain { tx, notice: notice_for(grace) }
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
        let wait = self.grace.saturating_sub(self.drain.notice);
        log::info!("draining: tunnels are told to close in {wait:?} (grace period {:?})", self.grace);
        tokio::time::sleep(wait).await;
        self.drain.announce();
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
