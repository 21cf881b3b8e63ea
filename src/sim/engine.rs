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
use std::time::{Duration, Instant};

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    /// The step under way: when it started, and its decode and prefill parts (ms).
    step: Option<(Instant, f64, f64)>,
}

/// Where one sequence's time to its first token went, as the engine saw it (ms; the answer's
/// usage chunk carries it as `x_sim_timing`, docs/sim.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timing {
    /// From submission to the start of the step that admitted it.
    pub queue_ms: f64,
    /// The part of `queue_ms` spent waiting for the step under way at submission to end.
    pub step_ahead_ms: f64,
    /// That step's prefill (other sequences' prompts).
    pub step_ahead_prefill_ms: f64,
    /// Its own uncached prompt's prefill, in its admission step.
    pub own_prefill_ms: f64,
    /// The prefill of the other sequences admitted in the same step.
    pub batch_prefill_ms: f64,
    /// The decode part of its admission step.
    pub decode_ms: f64,
    /// Sequences running in its admission step (itself included).
    pub running: usize,
    /// Sequences that were waiting ahead of it at submission.
    pub waiting_ahead: usize,
    /// From submission to its first token (measured: includes the timer's rounding).
    pub first_token_ms: f64,
}

/// A sequence's [`Timing`], filled by the engine as it goes.
type TimingCell = Arc<Mutex<Timing>>;

struct Seq {
    tx: mpsc::UnboundedSender<()>,
    /// Tokens to prefill when admitted (the uncached prompt; after a preemption, plus output).
    prefill: u64,
    /// Tokens whose KV the sequence holds once admitted (uncached prompt + produced).
    kv_tokens: u64,
    produced: u32,
    output: u32,
    held: usize,
    /// Submitted at.
    arrived: Instant,
    /// Admitted once (the timing is recorded at the first admission only).
    admitted: bool,
    timing: TimingCell,
}

/// The client side of a sequence: one message per token, in order.
pub struct SeqHandle(mpsc::UnboundedReceiver<()>, TimingCell);

impl SeqHandle {
    /// Waits for the next token; false when the engine will send no more.
    pub async fn token(&mut self) -> bool {
        self.0.recv().await.is_some()
    }

    /// Where the time to its first token went (complete once the first token came).
    pub fn timing(&self) -> Timing {
        *self.1.lock().unwrap_or_else(|p| p.into_inner())
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
        let now = Instant::now();
        let timing = TimingCell::default();
        let seq = Seq {
            tx,
            prefill: uncached,
            kv_tokens: uncached,
            produced: 0,
            output,
            held: 0,
            arrived: now,
            admitted: false,
            timing: timing.clone(),
        };
        if output == 0 {
            return SeqHandle(rx, timing);
        }
        let mut st = self.lock();
        {
            let mut t = timing.lock().unwrap_or_else(|p| p.into_inner());
            t.waiting_ahead = st.waiting.len();
            if let Some((started, decode, prefill)) = st.step {
                let left = (decode + prefill - ms(now.saturating_duration_since(started))).max(0.0);
                t.step_ahead_ms = left;
                t.step_ahead_prefill_ms = prefill.min(left);
            }
        }
        st.waiting.push_back(seq);
        self.publish(&st);
        drop(st);
        self.wake.notify_one();
        SeqHandle(rx, timing)
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
        let State { waiting, running, used_blocks, step } = &mut *st;
        running.retain(|s| {
            let keep = !s.tx.is_closed();
            if !keep {
                *used_blocks -= s.held;
            }
            keep
        });
        waiting.retain(|s| !s.tx.is_closed());
        let mut prefill = 0u64;
        let first_admitted = running.len();
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
        let n = running.len();
        if n == 0 {
            *step = None;
            self.publish(&st);
            return None;
        }
        let s = &self.settings;
        let decode_ms = s.decode_ms_per_step as f64 * (1.0 + s.decode_batch_factor * (n - 1) as f64);
        let per_token_ms = s.prefill_us_per_token as f64 / 1000.0;
        let prefill_ms = prefill as f64 * per_token_ms;
        let now = Instant::now();
        *step = Some((now, decode_ms, prefill_ms));
        for seq in running.iter_mut().skip(first_admitted).filter(|s| !s.admitted) {
            seq.admitted = true;
            let mut t = seq.timing.lock().unwrap_or_else(|p| p.into_inner());
            let own = seq.kv_tokens as f64 * per_token_ms;
            t.queue_ms = ms(now.saturating_duration_since(seq.arrived));
            t.step_ahead_ms = t.step_ahead_ms.min(t.queue_ms);
            t.step_ahead_prefill_ms = t.step_ahead_prefill_ms.min(t.step_ahead_ms);
            t.own_prefill_ms = own;
            t.batch_prefill_ms = (prefill_ms - own).max(0.0);
            t.decode_ms = decode_ms;
            t.running = n;
        }
        self.publish(&st);
        Some(Duration::from_secs_f64((decode_ms + prefill_ms) / 1000.0))
    }

    /// The end of a step: a token for every running sequence, finished ones leave, blocks
    /// grow (preempting when none is free).
    fn advance(&self) {
        let mut st = self.lock();
        let State { waiting, running, used_blocks, .. } = &mut *st;
        let mut i = 0;
        while i < running.len() {
            let s = &mut running[i];
            s.produced += 1;
            s.kv_tokens += 1;
            if s.produced == 1 {
                s.timing.lock().unwrap_or_else(|p| p.into_inner()).first_token_ms = ms(s.arrived.elapsed());
            }
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
        engine_with(EngineSettings { max_seqs, kv_blocks, decode_ms_per_step: 0, ..Default::default() })
    }

    /// An engine with fresh gauges; 16 chars a block: 4 tokens a block.
    fn engine_with(settings: EngineSettings) -> Arc<Engine> {
        let gauges = EngineGauges {
            running: IntGauge::new("r", "r").unwrap(),
            waiting: IntGauge::new("w", "w").unwrap(),
            kv_usage: Gauge::new("k", "k").unwrap(),
            preemptions: IntCounter::new("p", "p").unwrap(),
        };
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
        let settings = EngineSettings {
            max_seqs: 4,
            kv_blocks: 100,
            prefill_us_per_token: 1000,
            decode_ms_per_step: 10,
            decode_batch_factor: 0.5,
        };
        let e = engine_with(settings);
        let _a = e.submit(4, 9);
        let _b = e.submit(6, 9);
        // 10 × (1 + 0.5 × 1) + 10 tokens × 1 ms.
        assert_eq!(e.schedule(), Some(Duration::from_millis(25)));
        e.advance();
        assert_eq!(e.schedule(), Some(Duration::from_millis(15)));
    }

    /// Each sequence's timing splits its wait: the step under way when it came, its own
    /// prefill and that of the others admitted with it, the decode part of that step.
    #[test]
    fn timing_tells_where_the_first_token_waited() {
        let settings = EngineSettings {
            max_seqs: 2,
            kv_blocks: 100,
            prefill_us_per_token: 1000,
            decode_ms_per_step: 10,
            decode_batch_factor: 0.0,
        };
        let e = engine_with(settings);
        let a = e.submit(30, 2);
        assert_eq!(e.schedule(), Some(Duration::from_millis(40)));
        // b and c come during a's prefill step; c finds b waiting ahead of it.
        let b = e.submit(4, 2);
        let c = e.submit(6, 2);
        e.advance();
        let ta = a.timing();
        assert_eq!((ta.own_prefill_ms, ta.batch_prefill_ms, ta.decode_ms, ta.running), (30.0, 0.0, 10.0, 1));
        assert!(ta.first_token_ms >= 0.0);
        let tb = b.timing();
        assert!(tb.step_ahead_ms > 39.0 && tb.step_ahead_ms <= 40.0, "{tb:?}");
        assert_eq!(tb.step_ahead_prefill_ms, 30.0);
        assert_eq!(c.timing().waiting_ahead, 1);
        // One seat frees only when a ends: b is admitted alone, c waits for a seat.
        assert_eq!(e.schedule(), Some(Duration::from_millis(14)));
        e.advance();
        let tb = b.timing();
        assert_eq!((tb.own_prefill_ms, tb.batch_prefill_ms, tb.running), (4.0, 0.0, 2));
        assert_eq!(
            c.timing(),
            Timing {
                step_ahead_ms: c.timing().step_ahead_ms,
                step_ahead_prefill_ms: 30.0,
                waiting_ahead: 1,
                ..Timing::default()
            }
        );
        assert_eq!(e.schedule(), Some(Duration::from_millis(16)));
        let tc = c.timing();
        assert_eq!((tc.own_prefill_ms, tc.running), (6.0, 2));
    }
}
