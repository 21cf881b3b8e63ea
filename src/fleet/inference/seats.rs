//! When each replica frees a decode seat, predicted from what the gateway relays.
//!
//! A replica decodes at most its batch of sequences together (vLLM's `max_num_seqs`: configured
//! as `inference.max_seqs`, else the most seen running, `ReplicaLoad::seat_batch` in
//! `fleet/inference/mod.rs`); a request sent while
//! every seat is taken waits in the replica's first-come queue until enough running sequences
//! end. The gateway knows every request it sent there, its `max_tokens`, and how many tokens of
//! its answer it has relayed (one SSE event a token), so it can tell how many decode steps
//! remain until the seat of a request sent now frees: with `k` requests already waiting there,
//! the (k + 1)-th smallest remaining output among the running ones. Steps become time by the
//! replica's step time, learned from the gaps between relayed events, and time becomes prefill
//! tokens (the scorer's unit, `score.rs`) by the replica's prefill rate, learned from the first
//! token of requests that found a free seat (leaning to its lower samples, which err long).
//! Until both rates are learned the wait counts 0.
//! `max_tokens` is an upper bound: a sequence that ends early frees its seat sooner, so the
//! prediction errs long, the same way on every replica.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Prefill tokens a first token must have waited for to teach the prefill rate: below that one
/// decode step and the network dominate the time.
pub const LEARN_PREFILL_TOKENS: u64 = 256;
/// Tokens between two samples of a request's step time.
pub const LEARN_STEP_TOKENS: u64 = 16;
/// Weight of a new sample in the learned rates (1 / this).
const EWMA: u64 = 8;

/// One request on a replica: its answer's length bound and how much of it was relayed.
#[derive(Debug)]
pub struct Progress {
    max_tokens: u64,
    produced: AtomicU64,
    /// Clock µs of the send, then of the first relayed event.
    first_us: AtomicU64,
    /// Prefill tokens it waited for if it found a free seat (pending there and its own
    /// uncached prompt); 0 if it had to queue for a seat (its first token then teaches nothing).
    prefill_ahead: u64,
}

impl Progress {
    pub fn new(max_tokens: u64, prefill_ahead: u64, now_us: u64) -> Self {
        Progress { max_tokens, produced: AtomicU64::new(0), first_us: AtomicU64::new(now_us), prefill_ahead }
    }

    /// Decode steps until it ends (at least one).
    fn left(&self) -> u64 {
        self.max_tokens.saturating_sub(self.produced.load(Ordering::Relaxed)).max(1)
    }
}

/// A replica's requests from the gateway, in the order sent, and its learned rates.
#[derive(Debug, Default)]
pub struct Seats {
    sent: Mutex<Vec<Arc<Progress>>>,
    /// The gateway's requests there past their first token and not ended: running there.
    running: AtomicU64,
    /// The most of them at once (a lower bound of the replica's batch, seen at every first
    /// token rather than at scrapes).
    max_running: AtomicU64,
    /// Time between tokens of one sequence there, µs (0: not learned yet).
    step_us: AtomicU64,
    /// Prefill time per uncached prompt token there, ns (0: not learned yet).
    prefill_ns: AtomicU64,
}

/// Learns a rate whose samples only err long (the prefill rate: a first token may also have
/// waited for a step under way or other prompts admitted with it): a lower sample counts at
/// once by half, a higher one by 1 / [`EWMA`].
fn learn_floor(rate: &AtomicU64, sample: u64) {
    let _ = rate.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            sample
        } else if sample < old {
            old - (old - sample) / 2
        } else {
            (old * (EWMA - 1) + sample) / EWMA
        })
    });
}

fn learn(rate: &AtomicU64, sample: u64) {
    let _ = rate.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 { sample } else { (old * (EWMA - 1) + sample) / EWMA })
    });
}

impl Seats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Progress>>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gateway's requests there now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn add(&self, p: Arc<Progress>) {
        self.lock().push(p);
    }

    pub fn remove(&self, p: &Arc<Progress>) {
        let mut sent = self.lock();
        if let Some(at) = sent.iter().position(|q| Arc::ptr_eq(q, p)) {
            sent.remove(at);
            if p.produced.load(Ordering::Relaxed) > 0 {
                let _ = self.running.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
            }
        }
    }

    /// The most of the gateway's requests seen running there at once.
    pub fn max_running(&self) -> u64 {
        self.max_running.load(Ordering::Relaxed)
    }

    /// `events` tokens of `p`'s answer were relayed at `now_us`: the first teaches the prefill
    /// rate (if `p` found a free seat), the later ones the step time, as the average since the
    /// first over [`LEARN_STEP_TOKENS`] or more (single gaps are not steps: a chunk may carry
    /// several events, and the last events of an answer come together).
    pub fn relayed(&self, p: &Progress, events: u64, now_us: u64) {
        if events == 0 {
            return;
        }
        let before = p.produced.fetch_add(events, Ordering::Relaxed);
        if before > 0 {
            let since = now_us.saturating_sub(p.first_us.load(Ordering::Relaxed));
            if before >= LEARN_STEP_TOKENS && before % LEARN_STEP_TOKENS < events {
                // `before + events - 1` tokens came after the first, one a step.
                learn(&self.step_us, since / (before + events - 1));
            }
            return;
        }
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_running.fetch_max(running, Ordering::Relaxed);
        let gap = now_us.saturating_sub(p.first_us.swap(now_us, Ordering::Relaxed));
        if p.prefill_ahead >= LEARN_PREFILL_TOKENS {
            // The first token comes one step after the prefill it waited for.
            let prefill_us = gap.saturating_sub(self.step_us.load(Ordering::Relaxed));
            learn_floor(&self.prefill_ns, prefill_us * 1000 / p.prefill_ahead);
        }
    }

    /// Decode steps until a request sent now gets a seat, with `batch` seats (0: not learned,
    /// taken as free).
    pub fn steps_to_seat(&self, batch: usize) -> u64 {
        let sent = self.lock();
        if batch == 0 || sent.len() < batch {
            return 0;
        }
        // The first `batch` sent run (the replica admits first come first); the others wait.
        let mut left: Vec<u64> = sent.iter().take(batch).map(|p| p.left()).collect();
        left.sort_unstable();
        let ahead = sent.len() - batch;
        left.get(ahead.min(batch - 1)).copied().unwrap_or(0)
    }

    /// The learned step time (µs) and prefill rate (ns a token); 0: not learned yet.
    pub fn rates(&self) -> (u64, u64) {
        (self.step_us.load(Ordering::Relaxed), self.prefill_ns.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    impl Seats {
        /// The wait for a seat in prefill tokens, the scorer's unit (0 until both rates are
        /// learned): how the two rates compose, as the scorer variants measured them.
        fn wait_tokens(&self, batch: usize) -> f64 {
            let (step, prefill) = self.rates();
            if step == 0 || prefill == 0 {
                return 0.0;
            }
            self.steps_to_seat(batch) as f64 * step as f64 * 1000.0 / prefill as f64
        }
    }

    fn sent(seats: &Seats, max_tokens: &[u64]) -> Vec<Arc<Progress>> {
        max_tokens
            .iter()
            .map(|&m| {
                let p = Arc::new(Progress::new(m, 0, 1));
                seats.add(p.clone());
                p
            })
            .collect()
    }

    #[test]
    fn the_seat_frees_when_the_shortest_running_answer_ends() {
        let seats = Seats::default();
        let p = sent(&seats, &[90, 40, 60]);
        assert_eq!(seats.steps_to_seat(4), 0, "a seat is free");
        assert_eq!(seats.steps_to_seat(0), 0, "batch unknown: taken as free");
        assert_eq!(seats.steps_to_seat(3), 40);
        seats.relayed(&p[2], 1, 10);
        seats.relayed(&p[2], 30, 20);
        assert_eq!(seats.steps_to_seat(3), 29, "60 less the 31 relayed");
        // Two more wait there: a request sent now has the third seat to free.
        sent(&seats, &[10, 10]);
        assert_eq!(seats.steps_to_seat(3), 90);
        seats.remove(&p[0]);
        // The first waiter runs now; one still waits ahead, for the seat freed at 10 steps.
        assert_eq!(seats.steps_to_seat(3), 29);
    }

    /// The requests past their first token are running there; the most at once bounds the
    /// batch from below.
    #[test]
    fn the_most_running_at_once_is_counted_from_first_tokens() {
        let seats = Seats::default();
        let p = sent(&seats, &[10, 10, 10]);
        assert_eq!(seats.max_running(), 0, "none has a first token yet");
        seats.relayed(&p[0], 1, 5);
        seats.relayed(&p[1], 2, 6);
        seats.relayed(&p[1], 1, 7);
        assert_eq!(seats.max_running(), 2, "a later event of a running request counts once");
        seats.remove(&p[0]);
        seats.relayed(&p[2], 1, 8);
        assert_eq!(seats.max_running(), 2, "one ended before the third began");
        seats.remove(&p[1]);
        seats.remove(&p[2]);
        assert_eq!(seats.running.load(Ordering::Relaxed), 0);
    }

    /// The prefill rate follows a lower sample at once by half and a higher one slowly: its
    /// samples err long (a first token may also have waited for others' prompts).
    #[test]
    fn the_prefill_rate_leans_to_its_lower_samples() {
        let rate = AtomicU64::new(0);
        learn_floor(&rate, 200);
        learn_floor(&rate, 100);
        assert_eq!(rate.load(Ordering::Relaxed), 150);
        learn_floor(&rate, 950);
        assert_eq!(rate.load(Ordering::Relaxed), 250);
    }

    #[test]
    fn rates_are_learned_from_relayed_tokens() {
        let seats = Seats::default();
        let long = Arc::new(Progress::new(50, 1_000, 1_000));
        seats.add(long.clone());
        let queued = Arc::new(Progress::new(50, 0, 1_000));
        seats.add(queued.clone());
        assert_eq!(seats.wait_tokens(1), 0.0, "nothing learned yet");
        // 1,000 tokens of prefill and no step known: 100 ms, 100 µs a token.
        seats.relayed(&long, 1, 101_000);
        assert_eq!(seats.prefill_ns.load(Ordering::Relaxed), 100_000);
        seats.relayed(&queued, 1, 500_000);
        assert_eq!(seats.prefill_ns.load(Ordering::Relaxed), 100_000, "a queued request teaches no prefill");
        // Then a token every 20 ms: learned once 16 came after the first.
        for n in 1..16 {
            seats.relayed(&long, 1, 101_000 + n * 20_000);
        }
        assert_eq!(seats.step_us.load(Ordering::Relaxed), 0, "15 steps: not yet");
        seats.relayed(&long, 2, 101_000 + 17 * 20_000);
        assert_eq!(seats.step_us.load(Ordering::Relaxed), 20_000);
        // 32 steps of 20 ms left on the one seat: 640 ms, 6,400 tokens of prefill.
        assert_eq!(seats.steps_to_seat(1), 32);
        assert_eq!(seats.wait_tokens(1), 6_400.0);
    }
}
