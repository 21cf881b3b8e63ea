//! The shape the fleet's periodic work shares (active health probes in `probe.rs`, inference
//! scrapes and adapter rounds in `inference/scrape.rs`): one Pingora background service that,
//! every tick, reads the current runtime (so reloads are picked up) and starts what is due.
//! The work itself claims its own schedule and spawns its own tasks, so a slow round never
//! delays the ticks.

use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct Ticker {
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// How often `start_due` runs (the finest useful interval of the work).
    pub every: Duration,
    /// Starts the work due now; must not block. Returns whether the runtime has any such work
    /// configured at all.
    pub start_due: fn(&Runtime) -> bool,
}

/// How long the ticker waits when nothing is configured: a reload that adds work is picked up
/// within this, and an idle gateway is not woken every few milliseconds for nothing.
const IDLE: Duration = Duration::from_secs(1);

#[async_trait::async_trait]
impl BackgroundService for Ticker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !(self.start_due)(&self.runtime.load_full()) {
                        tokio::select! {
                            _ = tokio::time::sleep(IDLE) => {}
                            _ = shutdown.changed() => return,
                        }
                        tick.reset();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
