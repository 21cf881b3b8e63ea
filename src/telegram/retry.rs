//! Retry policy for Bot API calls: flood control (429) waits exactly `retry_after`; network
//! errors and Telegram 5xx back off exponentially with jitter; anything else is final.
//! Callers run inside one chat's task, so a wait here holds only that chat's queue.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::bot_api::BotError;

/// Transient failures tolerated per call before giving up (≈ 0.5+1+2+4+8 s of waiting).
const MAX_TRANSIENT: u32 = 5;
/// Flood waits tolerated per call; Telegram's `retry_after` is authoritative, so this only
/// guards against a broken server answering 429 forever.
const MAX_FLOOD: u32 = 10;

/// Exponential backoff with "equal jitter": a delay in [d/2, d], d doubling up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { next: base, base, cap }
    }

    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = d / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Runs `op` until it succeeds or fails for good.
pub async fn retrying<T, F, Fut>(mut op: F) -> Result<T, BotError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BotError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
    let (mut floods, mut transients) = (0, 0);
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(wait) = err.retry_after() {
            floods += 1;
            if floods > MAX_FLOOD {
                return Err(err);
            }
            log::warn!("{err}; waiting {}s as Telegram asks", wait.as_secs());
            tokio::time::sleep(wait).await;
        } else if err.is_transient() {
            transients += 1;
            if transients > MAX_TRANSIENT {
                return Err(err);
            }
            let wait = backoff.delay();
            log::warn!("{err}; retrying in {} ms", wait.as_millis());
            tokio::time::sleep(wait).await;
        } else {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let ds: Vec<Duration> = (0..5).map(|_| b.delay()).collect();
        let ranges = [(50, 100), (100, 200), (200, 400), (200, 400), (200, 400)];
        for (d, (lo, hi)) in ds.iter().zip(ranges) {
            assert!(*d >= Duration::from_millis(lo) && *d <= Duration::from_millis(hi), "{d:?}");
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
