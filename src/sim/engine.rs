//! A replica model for routing benchmarks: continuous batching in the manner of vLLM's
//! scheduler, on when `--max-seqs` is given (docs/sim.md says what it models and what not).
//!
//! - At most `max_seqs` sequences run (decode together); the others wait, first come first
//!   served.
//! - KV capacity is `kv_blocks` blocks of `block_chars` prompt bytes (4 bytes a token, the
//!   sim's token rule). A running sequence holds blocks for its *uncached* prompt and for
//!   the tokens it has produced, until it ends; cached prefix blocks live in the prefix cache
//!   (shared and evictable, bounded by `kv_blocks` too). A waiting sequence is admitted only
//!   when its prompt blocks fit; when a running one needs a block and none is free, the most
//!   recently admitted sequence is preempted (recompute: back to the head of the queue, its
//!   prompt and output to prefill again) and `vllm:num_preemptions_total` counts it.
//! - One engine step: `decode_ms_per_step × (1 + decode_batch_factor × (running − 1))`, plus
//!   `prefill_us_per_token` for every uncached prompt token of the sequences admitted in
//!   that step. Each running sequence gets one token per step; a newly admitted one gets its
//!   first token at the end of its prefill step.
//! - A client that leaves frees its sequence (and blocks) at the next step.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge};
use tokio::sync::{mpsc, Notify};

/// The model's settings (`--max-seqs`, `--kv-blocks`, `--prefill-us-per-token`,
/// `--decode-ms-per-step`, `--decode-batch-factor`; `--block-chars` is shared with the cache).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Sequences decoded together; 0 = the model is off (fixed `--ttft-ms` / `--itl-ms` pacing).
    pub max_seqs: usize,
    /// KV capacity in blocks (default 4096).
    pub kv_blocks: usize,
    /// Prefill time per uncached prompt token, µs (default 0).
    pub prefill_us_per_token: u64,
    /// Step time with one running sequence, ms (default 10).
    pub decode_ms_per_step: u64,
    /// Step time growth per extra running sequence, as a fraction of the base (default 0).
    pub decode_batch_factor: f64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_seqs: 0,
            kv_blocks: 4096,
            prefill_us_per_token: 0,
            decode_ms_per_step: 10,
            decode_batch_factor: 0.0,
        }
    }
}

impl EngineSettings {
    /// Applies one of the model's flags; `None` when `flag` is not one of them.
    pub fn set(&mut self, flag: &str, v: &str) -> Option<Result<(), String>> {
        fn num<T: std::str::FromStr>(flag: &str, v: &str, out: &mut T) -> Result<(), String>
        where
            T::Err: std::fmt::Display,
        {
            *out = v.parse().map_err(|e| format!("{flag}: cannot parse {v:?}: {e}"))?;
            Ok(())
        }
        Some(match flag {
            "--max-seqs" => num(flag, v, &mut self.max_seqs),
            "--kv-blocks" => num(flag, v, &mut self.kv_blocks),
            "--prefill-us-per-token" => num(flag, v, &mut self.prefill_us_per_token),
            "--decode-ms-per-step" => num(flag, v, &mut self.decode_ms_per_step),
            "--decode-batch-factor" => num(flag, v, &mut self.decode_batch_factor),
            _ => return None,
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_seqs > 0 && self.kv_blocks == 0 {
            return Err("--kv-blocks: must be at least 1 when --max-seqs is set".into());
        }
        if !(self.decode_batch_factor >= 0.0 && self.decode_batch_factor.is_finite()) {
            return Err(format!("--decode-batch-factor: {} is not a non-negative number", self.decode_batch_factor));
        }
        Ok(())
    }
}

/// The gauges and counters the engine keeps current (registered by `metrics.rs`).
#[derive(Clone)]
pub struct EngineGauges {
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub kv_usage: Gauge,
    pub preemptions: IntCounter,
}

/// One replica's scheduler. [`Engine::run`] is its loop; [`Engine::submit`] adds a request.
pub struct Engine {
    settings: EngineSettings,
    /// Prompt tokens per block (block_chars / 4, at least 1).
    tokens_per_block: u64,
    state: Mutex<State>,
    wake: Notify,
    gauges: EngineGauges,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    used_blocks: usize,
}

struct Seq {
    tx: mpsc::UnboundedSender<()>,
    /// Tokens to prefill when admitted (the uncached prompt; after a preemption, plus output).
    prefill: u64,
    /// Tokens whose KV the sequence holds once admitted (uncached prompt + produced).
    kv_tokens: u64,
    produced: u32,
    output: u32,
    held: usize,
}

/// The client side of a sequence: one message per token, in order.
pub struct SeqHandle(mpsc::UnboundedReceiver<()>);

impl SeqHandle {
    /// Waits for the next token; false when the engine will send no more.
    pub async fn token(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}

impl Engine {
    pub fn new(settings: EngineSettings, block_chars: usize, gauges: EngineGauges) -> Self {
        let tokens_per_block = (block_chars / super::prefix_cache::CHARS_PER_TOKEN).max(1) as u64;
        Engine { settings, tokens_per_block, state: Mutex::new(State::default()), wake: Notify::new(), gauges }
    }

    /// Queues a sequence of `uncached` prompt tokens that will produce `output` tokens.
    pub fn submit(&self, uncached: u64, output: u32) -> SeqHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = Seq { tx, prefill: uncached, kv_tokens: uncached, produced: 0, output, held: 0 };
        if output == 0 {
            return SeqHandle(rx);
        }
        let mut st = self.lock();
        st.waiting.push_back(seq);
        self.publish(&st);
        drop(st);
        self.wake.notify_one();
        SeqHandle(rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-step; the queues are still consistent enough for a
        // simulator to go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocks_for(&self, tokens: u64) -> usize {
        tokens.div_ceil(self.tokens_per_block) as usize
    }

    /// The scheduler loop; runs as long as the replica serves.
    pub async fn run(self: Arc<Self>) {
        loop {
            let step = self.schedule();
            match step {
                None => self.wake.notified().await,
                Some(d) => {
                    tokio::time::sleep(d).await;
                    self.advance();
                }
            }
        }
    }

    /// Drops departed clients, admits what fits, and returns the step's duration (`None`:
    /// nothing to do).
    fn schedule(&self) -> Option<Duration> {
        let mut st = self.lock();
        let State { waiting, running, used_blocks } = &mut *st;
        running.retain(|s| {
            let keep = !s.tx.is_closed();
            if !keep {
                *used_blocks -= s.held;
            }
            keep
        });
        waiting.retain(|s| !s.tx.is_closed());
        let mut prefill = 0u64;
        while running.len() < self.settings.max_seqs {
            let Some(next) = waiting.front() else { break };
            let need = self.blocks_for(next.kv_tokens + 1);
            // A prompt larger than the whole cache still runs alone rather than wait forever.
            let fits = *used_blocks + need <= self.settings.kv_blocks || running.is_empty();
            if !fits {
                break;
            }
            let Some(mut seq) = waiting.pop_front() else { break };
            seq.held = need;
            *used_blocks += need;
            prefill += seq.prefill;
            seq.prefill = 0;
            running.push(seq);
        }
        self.publish(&st);
        let n = st.running.len();
        if n == 0 {
            return None;
        }
        let s = &self.settings;
        let decode_ms = s.decode_ms_per_step as f64 * (1.0 + s.decode_batch_factor * (n - 1) as f64);
        let prefill_ms = (prefill * s.prefill_us_per_token) as f64 / 1000.0;
        Some(Duration::from_secs_f64((decode_ms + prefill_ms) / 1000.0))
    }

    /// The end of a step: a token for every running sequence, finished ones leave, blocks
    /// grow (preempting when none is free).
    fn advance(&self) {
        let mut st = self.lock();
        let State { waiting, running, used_blocks } = &mut *st;
        let mut i = 0;
        while i < running.len() {
            let s = &mut running[i];
            s.produced += 1;
            s.kv_tokens += 1;
            let sent = s.tx.send(()).is_ok();
            if !sent || s.produced >= s.output {
                *used_blocks -= s.held;
                running.remove(i);
                continue;
            }
            i += 1;
        }
        // Grow each survivor's blocks; without a free block, preempt the newest.
        let mut i = 0;
        while i < running.len() {
            let need = self.blocks_for(running[i].kv_tokens + 1);
            let extra = need.saturating_sub(running[i].held);
            if extra == 0 || *used_blocks + extra <= self.settings.kv_blocks || running.len() == 1 {
                running[i].held += extra;
                *used_blocks += extra;
                i += 1;
                continue;
            }
            let Some(mut victim) = running.pop() else { break };
            *used_blocks -= victim.held;
            victim.held = 0;
            victim.prefill = victim.kv_tokens;
            waiting.push_front(victim);
            self.gauges.preemptions.inc();
        }
        self.publish(&st);
    }

    fn publish(&self, st: &State) {
        self.gauges.running.set(st.running.len() as i64);
        self.gauges.waiting.set(st.waiting.len() as i64);
        self.gauges.kv_usage.set(st.used_blocks as f64 / self.settings.kv_blocks.max(1) as f64);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn engine(max_seqs: usize, kv_blocks: usize) -> Arc<Engine> {
        let gauges = EngineGauges {
            running: IntGauge::new("r", "r").unwrap(),
            waiting: IntGauge::new("w", "w").unwrap(),
            kv_usage: Gauge::new("k", "k").unwrap(),
            preemptions: IntCounter::new("p", "p").unwrap(),
        };
        let settings = EngineSettings { max_seqs, kv_blocks, decode_ms_per_step: 0, ..Default::default() };
        // 16 chars a block: 4 tokens a block.
        Arc::new(Engine::new(settings, 16, gauges))
    }

    #[test]
    fn admits_up_to_max_seqs_and_queues_the_rest() {
        let e = engine(2, 100);
        let _a = e.submit(4, 3);
        let _b = e.submit(4, 3);
        let _c = e.submit(4, 3);
        assert!(e.schedule().is_some());
        assert_eq!((e.gauges.running.get(), e.gauges.waiting.get()), (2, 1));
        // Each holds blocks_for(5) = 2 of 100.
        assert!((e.gauges.kv_usage.get() - 0.04).abs() < 1e-9);
    }

    #[test]
    fn tokens_arrive_and_finished_sequences_free_their_blocks() {
        let e = engine(4, 100);
        let mut h = e.submit(4, 2);
        e.schedule();
        e.advance();
        assert!(h.0.try_recv().is_ok());
        e.schedule();
        e.advance();
        assert!(h.0.try_recv().is_ok());
        assert_eq!(e.gauges.running.get(), 0);
        assert_eq!(e.lock().used_blocks, 0);
        assert!(h.0.try_recv().is_err(), "no third token");
    }

    #[test]
    fn kv_limit_keeps_sequences_waiting_and_preempts_when_full() {
        let e = engine(8, 4);
        let _a = e.submit(6, 100); // needs 2 blocks
        let _b = e.submit(6, 100); // needs 2 blocks
        let _c = e.submit(6, 100); // does not fit
        e.schedule();
        assert_eq!((e.gauges.running.get(), e.gauges.waiting.get()), (2, 1));
        // Two more tokens each: 8 tokens need a third block, none is free: b is preempted.
        e.advance();
        e.schedule();
        e.advance();
        assert_eq!(e.gauges.preemptions.get(), 1);
        assert_eq!(e.gauges.running.get(), 1);
        assert_eq!(e.gauges.waiting.get(), 2);
    }

    #[test]
    fn a_client_that_leaves_frees_its_place() {
        let e = engine(1, 100);
        let a = e.submit(4, 50);
        let _b = e.submit(4, 50);
        e.schedule();
        assert_eq!(e.gauges.waiting.get(), 1);
        drop(a);
        e.schedule();
        assert_eq!((e.gauges.running.get(), e.gauges.waiting.get()), (1, 0));
    }

    #[test]
    fn step_time_grows_with_the_batch_and_prefill() {
        let gauges = EngineGauges {
            running: IntGauge::new("r", "r").unwrap(),
            waiting: IntGauge::new("w", "w").unwrap(),
            kv_usage: Gauge::new("k", "k").unwrap(),
            preemptions: IntCounter::new("p", "p").unwrap(),
        };
        let settings = EngineSettings {
            max_seqs: 4,
            kv_blocks: 100,
            prefill_us_per_token: 1000,
            decode_ms_per_step: 10,
            decode_batch_factor: 0.5,
        };
        let e = Engine::new(settings, 16, gauges);
        let _a = e.submit(4, 9);
        let _b = e.submit(6, 9);
        // 10 × (1 + 0.5 × 1) + 10 tokens × 1 ms.
        assert_eq!(e.schedule(), Some(Duration::from_millis(25)));
        e.advance();
        assert_eq!(e.schedule(), Some(Duration::from_millis(15)));
    }
}
