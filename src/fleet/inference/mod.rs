//! `balance: inference`: choose the replica by what it is doing (vLLM's own `/metrics`,
//! scraped by [`scrape`]), what the gateway has sent it (prompt blocks in [`prefix_index`],
//! in-flight tokens, requests sent and ended since the last scrape), scored by [`score`]; when no
//! replica has a free seat (its learned batch and [`SEAT_HEADROOM`] waiting, counted exactly from
//! the gateway's own requests there) or every one is saturated, requests wait in the provider's
//! [`queue`] and go into the seats that free (late binding).
//!
//! A replica whose last [`STALE_AFTER`] scrapes failed (or that was never scraped) is *stale*: it counts with the
//! gateway's own numbers only (no queue, no KV use: in-flight tokens decide), and never as
//! saturated, so a broken `/metrics` can slow routing down but never refuse a request.

pub mod prefix_index;
pub mod queue;
pub mod score;
pub mod scrape;
pub mod seats;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prefix_index::PrefixIndex;
use queue::{AdmissionQueue, Seat};
use score::{Choice, Saturation, View, Weights};
use seats::{Progress, Seats};

/// Blocks the prefix index of one provider remembers (about 60 bytes each: 6 MB).
pub const INDEX_BLOCKS: usize = 100_000;
/// Consecutive failed scrapes after which a replica is stale (one late answer on a busy host
/// keeps the last signals).
pub const STALE_AFTER: u32 = 2;
/// Prompt blocks (of 16 tokens) a replica must hold beyond any other's for a waiter to be
/// released to it first: below that the difference is a few milliseconds of prefill.
pub const AFFINE_BLOCKS: usize = 4;
/// How long after the admission queue last held a request the scorer keeps weighing the held
/// prompt as its match fraction rather than as prefill saved (see [`score`]): the replicas are
/// still full of the requests it released, whose pending prefill would push conversations off
/// the replicas that hold them.
pub const CALM_AFTER: Duration = Duration::from_millis(500);
/// Requests the gateway lets wait in a replica's own queue beyond its learned batch before it
/// holds the next ones itself: one, ready for the next seat that frees (with none, a seat
/// stays empty for a step after each end, and the batch is no longer learned: the replica
/// never queues; measured at 1.2x capacity, 1,495 tokens/s against 2,217).
pub const SEAT_HEADROOM: usize = 1;
/// Output tokens assumed for a request without `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 256;

/// `providers[].inference`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceSettings {
    /// `scrape.path` (default `/metrics`) and `scrape.interval` (default 500ms).
    pub scrape_path: String,
    pub scrape_interval: Duration,
    /// `weights` (default prefix 3, queue 2, kv_cache 2).
    pub weights: Weights,
    /// `saturated` (default waiting 5, kv_cache 0.8).
    pub saturated: Saturation,
    /// `queue.max` (default 256) and `queue.timeout` (default 5s: an interactive client gains
    /// little from a longer wait, and clients retry after `Retry-After`).
    pub queue_max: usize,
    pub queue_timeout: Duration,
    /// `max_seqs`: each replica's batch, for the seat-wait prediction (0, the default: learned).
    pub max_seqs: usize,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            scrape_path: "/metrics".into(),
            scrape_interval: Duration::from_millis(500),
            weights: Weights { prefix: 3.0, queue: 2.0, kv_cache: 2.0 },
            saturated: Saturation { waiting: 5.0, kv_cache: 0.8 },
            queue_max: 256,
            queue_timeout: Duration::from_secs(5),
            max_seqs: 0,
        }
    }
}

/// What a replica's last good scrape said.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scraped {
    pub running: f64,
    pub waiting: f64,
    pub kv: f64,
}

/// One backend's load signals.
#[derive(Debug, Default)]
pub struct ReplicaLoad {
    last: Mutex<Option<Scraped>>,
    /// [`STALE_AFTER`] scrapes failed in a row (or none succeeded yet).
    stale: AtomicBool,
    /// Scrapes failed since the last good one.
    failures: std::sync::atomic::AtomicU32,
    /// Requests sent since the last good scrape.
    sent_since: AtomicU64,
    /// The gateway's requests there that ended since the last good scrape.
    done_since: AtomicU64,
    /// The replica's batch as learned: the sequences running at the last scrape that saw
    /// others wait (vLLM's `max_num_seqs`, or less when KV-bound), raised by any scrape that
    /// saw more running; 0 until it has queued once.
    batch: AtomicU64,
    /// The most sequences any scrape saw running there (a lower bound of its batch that, unlike
    /// `batch`, a request caught waiting between two engine steps does not lower).
    max_running: AtomicU64,
    /// `inference.max_seqs` (0: not configured, the batch is learned).
    max_seqs: AtomicU64,
    /// In-flight tokens at the last good scrape (the KV use is scaled by in-flight tokens since).
    inflight_at_scrape: AtomicU64,
    /// Estimated tokens (prompt + max_tokens) of the gateway's requests in flight there.
    inflight_tokens: AtomicU64,
    /// Uncached prompt tokens of the gateway's requests there that have no first token yet:
    /// prefill the replica still has to do, which every request landing there waits behind.
    prefill_tokens: AtomicU64,
    /// The gateway's requests there and how far their answers are: when a seat frees, and the
    /// replica's step time and prefill rate (shown in `/health`, weighed by `score.rs`).
    seats: Seats,
    /// Seats there granted to waiters of the admission queue not yet sent ([`queue::Seat`]).
    reserved: Arc<AtomicUsize>,
    /// The gateway's requests there when the running scrape started.
    inflight_before: AtomicUsize,
    /// Requests there at the last scrape that the gateway did not send (other clients): its
    /// running and waiting less the gateway's requests there (the more of before and after).
    external: AtomicUsize,
}

impl ReplicaLoad {
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    pub fn last(&self) -> Option<Scraped> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inflight_tokens(&self) -> u64 {
        self.inflight_tokens.load(Ordering::Relaxed)
    }

    /// What the gateway learned of the replica (`/health`): its batch (0: never queued), its
    /// decode step and prefill rate (null: not yet), and the steps until a seat frees now.
    pub fn learned(&self) -> serde_json::Value {
        let batch = self.batch.load(Ordering::Relaxed);
        let (step_us, prefill_ns) = self.seats.rates();
        serde_json::json!({
            "batch": batch,
            "inflight": self.seats.len(),
            "reserved": self.reserved.load(Ordering::Relaxed),
            "external": self.external.load(Ordering::Relaxed),
            "step_ms": (step_us > 0).then(|| step_us as f64 / 1000.0),
            "prefill_us_per_token": (prefill_ns > 0).then(|| prefill_ns as f64 / 1000.0),
            "seat_batch": self.seat_batch(),
            "steps_to_seat": self.seats.steps_to_seat(self.seat_batch()),
        })
    }

    /// A good scrape replaces the signals; a failed one marks the replica stale.
    pub fn record(&self, scraped: Option<Scraped>) {
        let failures = match scraped {
            Some(_) => 0,
            None => self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1),
        };
        self.failures.store(failures, Ordering::Relaxed);
        self.stale.store(failures >= STALE_AFTER || self.last().is_none() && scraped.is_none(), Ordering::Relaxed);
        if let Some(s) = scraped {
            let running = s.running.max(0.0) as u64;
            self.max_running.fetch_max(running, Ordering::Relaxed);
            if s.waiting > 0.0 {
                self.batch.store(running, Ordering::Relaxed);
            } else if self.batch.load(Ordering::Relaxed) > 0 {
                self.batch.fetch_max(running, Ordering::Relaxed);
            }
            self.inflight_at_scrape.store(self.inflight_tokens(), Ordering::Relaxed);
            let ours = self.seats.len().max(self.inflight_before.load(Ordering::Relaxed));
            let theirs = (s.running + s.waiting).max(0.0) as usize;
            self.external.store(theirs.saturating_sub(ours), Ordering::Relaxed);
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            self.sent_since.store(0, Ordering::Relaxed);
            self.done_since.store(0, Ordering::Relaxed);
        }
    }

    /// Requests that would wait in the replica's own queue now: the last scrape corrected by
    /// what the gateway sent and saw end since. Negative: free places in a batch whose size
    /// was learned. `None` for a stale replica.
    fn waiting_now(&self) -> Option<f64> {
        let s = self.last().filter(|_| !self.is_stale())?;
        let sent = self.sent_since.load(Ordering::Relaxed) as f64;
        let done = self.done_since.load(Ordering::Relaxed) as f64;
        let batch = self.batch.load(Ordering::Relaxed) as f64;
        Some(if batch > 0.0 {
            (s.running + s.waiting + sent - done).max(0.0) - batch
        } else if s.waiting > 0.0 {
            // A replica that already queues queues what was sent since, too.
            (s.waiting + sent - done).max(0.0)
        } else {
            0.0
        })
    }

    /// KV use now: the last scrape's, scaled by the gateway's in-flight tokens since (so a
    /// request that ends frees its share at once, and a burst counts before the next scrape).
    fn kv_now(&self, scraped: f64) -> f64 {
        let then = self.inflight_at_scrape.load(Ordering::Relaxed);
        if then == 0 {
            return scraped;
        }
        (scraped * self.inflight_tokens() as f64 / then as f64).clamp(0.0, 1.0)
    }

    /// A scrape of the replica starts: what the gateway has there now (see `external`).
    pub fn scrape_started(&self) {
        self.inflight_before.store(self.seats.len(), Ordering::Relaxed);
    }

    /// Requests the replica holds now, running or waiting: the gateway's there (sent and not
    /// ended: exact), the seats granted to waiters not yet sent, and the others' at the last
    /// scrape.
    pub fn occupied(&self) -> usize {
        self.seats.len() + self.reserved.load(Ordering::Relaxed) + self.external.load(Ordering::Relaxed)
    }

    /// Free seats: the learned batch (and `headroom` waiting) less what it holds. `None` while
    /// the batch is unknown or the replica stale.
    fn seat_room(&self, headroom: usize) -> Option<usize> {
        let batch = self.batch.load(Ordering::Relaxed) as usize;
        if batch == 0 || self.is_stale() || self.last().is_none() {
            return None;
        }
        Some((batch + headroom).saturating_sub(self.occupied()))
    }

    /// How many more requests the admission queue may send the replica: none while it is
    /// saturated, and no more than its free seats ([`SEAT_HEADROOM`] included) once its batch
    /// is known.
    fn room(&self, s: &Saturation) -> usize {
        let Some(waiting) = self.waiting_now() else { return 1 };
        let kv = self.last().map_or(0.0, |l| self.kv_now(l.kv));
        if kv > s.kv_cache || waiting > s.waiting {
            return 0;
        }
        let room = (s.waiting - waiting).floor() as usize + 1;
        match self.seat_room(SEAT_HEADROOM) {
            Some(seats) => room.min(seats),
            None => room,
        }
    }

    /// The batch the seat prediction assumes: unknown (0, every seat taken as free) until a
    /// scrape saw the replica queue, then the most sequences seen running there, by the scrapes
    /// or by the gateway's own count. Not `batch`: a scrape also sees a request waiting that
    /// merely arrived during an engine step, with seats free (docs/sim.md), and `batch` then
    /// takes the running count of that moment, often half the real one; a seat wait predicted
    /// from it sends requests away from the replicas holding their prompts.
    fn seat_batch(&self) -> usize {
        let configured = self.max_seqs.load(Ordering::Relaxed);
        if configured > 0 {
            return configured as usize;
        }
        if self.batch.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.max_running.load(Ordering::Relaxed).max(self.seats.max_running()) as usize
    }

    /// The predicted wait for a decode seat, in prefill tokens (0 until both rates are learned).
    fn seat_tokens(&self) -> f64 {
        let (step_us, prefill_ns) = self.seats.rates();
        if step_us == 0 || prefill_ns == 0 {
            return 0.0;
        }
        let steps = self.seats.steps_to_seat(self.seat_batch());
        steps as f64 * step_us as f64 * 1000.0 / prefill_ns as f64
    }

    /// The scorer's view (without prefix and candidacy).
    fn view(&self) -> View {
        let inflight_tokens = self.inflight_tokens() as f64;
        let prefill_tokens = self.prefill_tokens.load(Ordering::Relaxed) as f64;
        let seat_tokens = self.seat_tokens();
        match (self.last().filter(|_| !self.is_stale()), self.waiting_now()) {
            (Some(s), Some(waiting)) => View {
                waiting: waiting.max(0.0),
                kv: self.kv_now(s.kv),
                inflight_tokens,
                prefill_tokens,
                seat_tokens,
                ..View::default()
            },
            _ => View { inflight_tokens, prefill_tokens, seat_tokens, ..View::default() },
        }
    }
}

/// The inference state of one provider (rebuilt on reload, like the provider).
pub struct InferenceState {
    pub settings: InferenceSettings,
    pub replicas: Vec<ReplicaLoad>,
    index: Mutex<PrefixIndex>,
    pub queue: AdmissionQueue,
    /// When the next scrape round is due (clock ms).
    next_scrape: AtomicU64,
    /// A scrape round is running (the next one waits for it).
    scraping: AtomicBool,
    /// [`CALM_AFTER`] (a field so that tests can widen it).
    calm_after: Duration,
}

impl std::fmt::Debug for InferenceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// What a request asks of the fleet: its prompt blocks and estimated tokens.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    pub blocks: Vec<u64>,
    /// Estimated prompt tokens (covered by `blocks`, plus a partial block).
    pub prompt_tokens: u64,
    /// Estimated prompt + output tokens.
    pub tokens: u64,
}

impl InferenceState {
    pub fn new(settings: InferenceSettings, backends: usize) -> Self {
        let max_seqs = settings.max_seqs as u64;
        InferenceState {
            queue: AdmissionQueue::new(settings.queue_max, settings.queue_timeout),
            settings,
            replicas: (0..backends)
                .map(|_| ReplicaLoad {
                    stale: AtomicBool::new(true),
                    max_seqs: AtomicU64::new(max_seqs),
                    ..Default::default()
                })
                .collect(),
            index: Mutex::new(PrefixIndex::new(INDEX_BLOCKS)),
            calm_after: CALM_AFTER,
            next_scrape: AtomicU64::new(0),
            scraping: AtomicBool::new(false),
        }
    }

    /// True at most once per interval, and not while a round runs: the caller runs the
    /// scrape round, then calls [`InferenceState::round_done`].
    pub fn claim_scrape(&self, now_ms: u64) -> bool {
        let due = self.next_scrape.load(Ordering::Relaxed);
        if now_ms < due || self.scraping.swap(true, Ordering::AcqRel) {
            return false;
        }
        let next = now_ms + self.settings.scrape_interval.as_millis() as u64;
        self.next_scrape.store(next, Ordering::Relaxed);
        true
    }

    pub fn round_done(&self) {
        self.scraping.store(false, Ordering::Release);
    }

    /// Every replica as the scorer sees it for `demand`; `candidate(i)` says which may be used.
    pub fn views(&self, demand: &Demand, candidate: impl Fn(usize) -> bool) -> Vec<View> {
        let matches = if demand.blocks.is_empty() {
            vec![0; self.replicas.len()]
        } else {
            self.index.lock().unwrap_or_else(|p| p.into_inner()).matches(&demand.blocks, self.replicas.len())
        };
        let total = demand.blocks.len().max(1) as f64;
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| View {
                candidate: candidate(i),
                prefix: matches.get(i).copied().unwrap_or(0) as f64 / total,
                prompt_tokens: demand.prompt_tokens as f64,
                ..r.view()
            })
            .collect()
    }

    pub fn choose(&self, demand: &Demand, candidate: impl Fn(usize) -> bool) -> Choice {
        score::choose(&self.views(demand, candidate), &self.settings.weights, &self.settings.saturated, self.calm())
    }

    /// Whether the fleet is calm: the admission queue held no one within `calm_after`. Only then
    /// does the scorer weigh prefill waits ([`score::choose`]).
    pub fn calm(&self) -> bool {
        !self.queue.held_within(self.calm_after)
    }

    /// Whether a newcomer must queue: others already wait, or no usable replica has room (every
    /// one saturated, or without a free seat: late binding, the request waits here rather than
    /// in a replica's queue, and goes to the first seat that frees).
    pub fn must_queue(&self, candidate: impl Fn(usize) -> bool) -> bool {
        if !self.queue.is_empty() {
            return true;
        }
        let s = &self.settings.saturated;
        let mut usable = self.replicas.iter().enumerate().filter(|(i, _)| candidate(*i)).peekable();
        usable.peek().is_some() && usable.all(|(_, r)| r.room(s) == 0)
    }

    /// The replica holding clearly the most of `demand`'s prompt blocks (at least
    /// [`AFFINE_BLOCKS`] more than any other), the one a waiter is best released to.
    pub fn affine(&self, demand: &Demand) -> Option<usize> {
        if demand.blocks.is_empty() {
            return None;
        }
        let matches = self.index.lock().unwrap_or_else(|p| p.into_inner()).matches(&demand.blocks, self.replicas.len());
        let best = (0..matches.len()).max_by_key(|&i| matches[i])?;
        let second = matches.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, m)| *m).max().unwrap_or(0);
        (matches[best] >= second + AFFINE_BLOCKS).then_some(best)
    }

    /// Room on every usable replica goes to waiters, each replica's to those affine to it
    /// (after a scrape round).
    pub fn release_room(&self, candidate: impl Fn(usize) -> bool) {
        let s = &self.settings.saturated;
        for (i, r) in self.replicas.iter().enumerate().filter(|(i, _)| candidate(*i)) {
            if self.queue.is_empty() {
                return;
            }
            self.queue.grant_into(Some(i), r.room(s), Some(&r.reserved));
        }
    }

    /// A request on replica `i` ended: waiters take the room there (those affine to `i`
    /// first), or on the roomiest other replica if `i` has none.
    fn release_after(&self, i: usize) {
        if self.queue.is_empty() {
            return;
        }
        let s = &self.settings.saturated;
        let room = |j: usize| self.replicas.get(j).map_or(0, |r| r.room(s));
        let at = if room(i) > 0 {
            Some(i)
        } else {
            (0..self.replicas.len()).filter(|&j| room(j) > 0).max_by_key(|&j| room(j))
        };
        if let Some((j, r)) = at.and_then(|j| Some((j, self.replicas.get(j)?))) {
            self.queue.grant_into(Some(j), r.room(s), Some(&r.reserved));
        }
    }

    /// How many more requests the usable replicas take before each is saturated (for the
    /// grant after a scrape round).
    pub fn room(&self, candidate: impl Fn(usize) -> bool) -> usize {
        let s = &self.settings.saturated;
        self.replicas.iter().enumerate().filter(|(i, _)| candidate(*i)).map(|(_, r)| r.room(s)).sum()
    }
}

/// A request's charge on one replica: its tokens count as in flight there until the ticket
/// is dropped (with the request), or moved when a retry goes elsewhere.
#[derive(Debug)]
pub struct Ticket {
    pub state: Arc<InferenceState>,
    pub demand: Demand,
    /// The replica charged and the tokens charged there.
    charged: Mutex<Option<(usize, u64)>>,
    /// The replica and the uncached prompt tokens charged there as prefill, until the first
    /// token (or the end).
    prefilling: Mutex<Option<(usize, u64)>>,
    /// Whether `prefilling` holds a charge: read on every answer chunk, so that the chunks after
    /// the first cost one atomic load instead of a lock.
    in_prefill: AtomicBool,
    /// The replica whose room the admission queue granted this request (used once).
    granted: Mutex<Option<usize>>,
    /// The seat held for it there until it is charged somewhere.
    seat: Mutex<Option<Seat>>,
    /// The replica charged and the answer's progress there (read on every answer chunk).
    relay: ArcSwapOption<Relay>,
}

/// Where a request's answer comes from, and how far it is.
#[derive(Debug)]
struct Relay {
    replica: usize,
    progress: Arc<Progress>,
}

impl Ticket {
    pub fn new(state: Arc<InferenceState>, demand: Demand) -> Self {
        Ticket {
            state,
            demand,
            charged: Mutex::new(None),
            prefilling: Mutex::new(None),
            in_prefill: AtomicBool::new(false),
            granted: Mutex::new(None),
            seat: Mutex::new(None),
            relay: ArcSwapOption::empty(),
        }
    }

    /// The admission queue let the request go into room on `replica` (a seat held there).
    pub fn granted(&self, granted: queue::Granted) {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner()) = granted.replica;
        *self.seat.lock().unwrap_or_else(|p| p.into_inner()) = Some(granted.seat);
    }

    /// The replica for this request: the one whose room it was granted while that one is
    /// still a candidate and unsaturated (the room was counted for it), else the scorer's.
    pub fn choose(&self, candidate: impl Fn(usize) -> bool) -> Choice {
        let views = self.state.views(&self.demand, candidate);
        let granted = self.granted.lock().unwrap_or_else(|p| p.into_inner()).take();
        let s = &self.state.settings.saturated;
        match granted.filter(|&i| views.get(i).is_some_and(|v| v.candidate && !v.saturated(s))) {
            Some(i) => Choice::Replica(i),
            None => score::choose(&views, &self.state.settings.weights, s, self.state.calm()),
        }
    }

    /// Charges replica `i` (moving the charge from an earlier one) with the request's tokens
    /// less the prompt blocks the index says it already holds (its likely prefix-cache hit,
    /// which costs no prefill), and records the prompt blocks as sent there.
    pub fn charge(&self, i: usize) {
        let mut charged = self.charged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, tokens)) = charged.take() {
            self.uncharge(old, tokens);
        }
        self.first_token();
        let Some(r) = self.state.replicas.get(i) else { return };
        let mut tokens = self.demand.tokens;
        let mut cached = 0;
        if !self.demand.blocks.is_empty() {
            let mut index = self.state.index.lock().unwrap_or_else(|p| p.into_inner());
            let held = index.matches(&self.demand.blocks, self.state.replicas.len()).get(i).copied().unwrap_or(0);
            cached = ((held * prefix_index::BLOCK_BYTES / 4) as u64).min(self.demand.prompt_tokens);
            tokens -= cached.min(tokens);
            index.insert(&self.demand.blocks, i);
        }
        r.inflight_tokens.fetch_add(tokens, Ordering::Relaxed);
        r.sent_since.fetch_add(1, Ordering::Relaxed);
        *charged = Some((i, tokens));
        let prefill = self.demand.prompt_tokens - cached;
        let pending = r.prefill_tokens.fetch_add(prefill, Ordering::Relaxed);
        self.track(i, r, pending + prefill);
        // Counted among the replica's requests now: the seat held for it is no longer needed.
        drop(self.seat.lock().unwrap_or_else(|p| p.into_inner()).take());
        *self.prefilling.lock().unwrap_or_else(|p| p.into_inner()) = Some((i, prefill));
        self.in_prefill.store(true, Ordering::Release);
    }

    /// Registers the request among replica `i`'s seats (leaving the one it was on), with the
    /// prefill it waits for if it finds a free seat there.
    fn track(&self, i: usize, r: &ReplicaLoad, prefill_ahead: u64) {
        self.untrack();
        let batch = r.seat_batch();
        let ahead = if batch == 0 || r.seats.len() < batch { prefill_ahead } else { 0 };
        let max_tokens = self.demand.tokens.saturating_sub(self.demand.prompt_tokens);
        let progress = Arc::new(Progress::new(max_tokens, ahead, crate::clock::now_us()));
        r.seats.add(progress.clone());
        self.relay.store(Some(Arc::new(Relay { replica: i, progress })));
    }

    fn untrack(&self) {
        if let Some(old) = self.relay.swap(None) {
            if let Some(r) = self.state.replicas.get(old.replica) {
                r.seats.remove(&old.progress);
            }
        }
    }

    /// An answer chunk was relayed: the first ends the prefill ([`Ticket::first_token`]); its
    /// SSE events (one a token) tell how far the answer is ([`seats`]).
    pub fn relayed(&self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.first_token();
        let relay = self.relay.load();
        if let Some(at) = relay.as_ref() {
            let events = memchr::memmem::find_iter(chunk, b"data:").count() as u64;
            if let Some(r) = self.state.replicas.get(at.replica) {
                r.seats.relayed(&at.progress, events, crate::clock::now_us());
            }
        }
    }

    /// The answer's first bytes came: the replica finished this request's prefill.
    pub fn first_token(&self) {
        if !self.in_prefill.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some((i, tokens)) = self.prefilling.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        if let Some(r) = self.state.replicas.get(i) {
            let _ =
                r.prefill_tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(tokens)));
        }
    }

    fn uncharge(&self, i: usize, tokens: u64) {
        if let Some(r) = self.state.replicas.get(i) {
            let _ = r
                .inflight_tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(tokens)));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.first_token();
        self.untrack();
        let charged = self.charged.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((i, tokens)) = charged {
            self.uncharge(i, tokens);
            if let Some(r) = self.state.replicas.get(i) {
                r.done_since.fetch_add(1, Ordering::Relaxed);
            }
            // The request is done: one waiter may take its place now, not at the next scrape.
            self.state.release_after(i);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(n: usize) -> Arc<InferenceState> {
        Arc::new(InferenceState::new(InferenceSettings::default(), n))
    }

    #[test]
    fn tickets_charge_tokens_and_prefix_and_release_them() {
        let s = state(3);
        for r in &s.replicas {
            r.record(Some(Scraped::default()));
        }
        let demand = Demand { blocks: vec![1, 2, 3], prompt_tokens: 48, tokens: 500 };
        let t = Ticket::new(s.clone(), demand.clone());
        t.charge(1);
        assert_eq!(s.replicas[1].inflight_tokens(), 500);
        assert_eq!(s.replicas[1].prefill_tokens.load(Ordering::Relaxed), 48);
        t.first_token();
        assert_eq!(s.replicas[1].prefill_tokens.load(Ordering::Relaxed), 0);
        // Its prefill done, the same prompt now prefers replica 1 despite its load.
        assert_eq!(s.choose(&demand, |_| true), Choice::Replica(1));
        t.charge(2);
        assert_eq!((s.replicas[1].inflight_tokens(), s.replicas[2].inflight_tokens()), (0, 500));
        // A second request with the same prompt costs replica 2 no prefill: 3 blocks of 16 tokens less.
        let again = Ticket::new(s.clone(), demand);
        again.charge(2);
        assert_eq!(s.replicas[2].inflight_tokens(), 500 + 452);
        drop((t, again));
        assert_eq!(s.replicas[2].inflight_tokens(), 0);
    }

    /// A long prompt still in prefill on a replica sends the next request elsewhere, unless
    /// that request's own prefill there would be the shorter wait; its first token frees it.
    #[test]
    fn pending_prefill_is_a_wait_the_scorer_weighs() {
        let s = state(2);
        for r in &s.replicas {
            r.record(Some(Scraped::default()));
        }
        let long = Ticket::new(s.clone(), Demand { blocks: (100..124).collect(), prompt_tokens: 1_500, tokens: 1_600 });
        long.charge(0);
        // Replica 1 carries more tokens, all past prefill: by load alone it is the busier one.
        let busy = Ticket::new(s.clone(), Demand { blocks: vec![9], prompt_tokens: 100, tokens: 1_700 });
        busy.charge(1);
        busy.first_token();
        let short = Demand { blocks: vec![7], prompt_tokens: 100, tokens: 200 };
        assert_eq!(s.choose(&short, |_| true), Choice::Replica(1), "waiting behind 1,500 tokens of prefill");
        long.first_token();
        let follow_up = Demand { blocks: (100..125).collect(), prompt_tokens: 1_560, tokens: 1_600 };
        assert_eq!(s.choose(&follow_up, |_| true), Choice::Replica(0), "its prompt is held there, nothing to wait for");
    }

    /// While the admission queue held someone lately, a conversation stays on the replica that
    /// holds it though that one still prefills another prompt: the match fraction decides.
    #[tokio::test]
    async fn a_recent_queue_keeps_conversations_where_they_are_held() {
        let mut state = InferenceState::new(InferenceSettings::default(), 2);
        state.calm_after = Duration::from_secs(3600);
        let s = Arc::new(state);
        for r in &s.replicas {
            r.record(Some(Scraped::default()));
        }
        let first =
            Ticket::new(s.clone(), Demand { blocks: (100..124).collect(), prompt_tokens: 1_500, tokens: 1_600 });
        first.charge(0);
        let follow_up = Demand { blocks: (100..125).collect(), prompt_tokens: 1_560, tokens: 1_600 };
        assert!(s.calm());
        assert_eq!(s.choose(&follow_up, |_| true), Choice::Replica(1), "calm: 1,500 tokens of prefill pending on 0");
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.queue.wait("k".into(), 0, None).await })
        };
        while s.queue.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.queue.grant(1), 1);
        assert!(waiter.await.unwrap().is_ok());
        assert!(!s.calm(), "the queue held a request within the window");
        assert_eq!(s.choose(&follow_up, |_| true), Choice::Replica(0), "the replica holding the conversation");
    }

    /// The seat prediction's batch: unknown until the replica queued once, then the most seen
    /// running (not the running count of a scrape that caught a request between two steps);
    /// `max_seqs` when configured.
    #[test]
    fn the_seat_batch_is_the_most_seen_running_or_the_configured_one() {
        let s = state(1);
        let r = &s.replicas[0];
        r.record(Some(Scraped { running: 12.0, waiting: 0.0, kv: 0.1 }));
        assert_eq!(r.seat_batch(), 0, "never queued: every seat taken as free");
        r.record(Some(Scraped { running: 7.0, waiting: 1.0, kv: 0.1 }));
        assert_eq!(r.batch.load(Ordering::Relaxed), 7);
        assert_eq!(r.seat_batch(), 12);
        let configured =
            Arc::new(InferenceState::new(InferenceSettings { max_seqs: 16, ..InferenceSettings::default() }, 1));
        assert_eq!(configured.replicas[0].seat_batch(), 16);
    }

    #[test]
    fn stale_replicas_are_never_saturated() {
        let s = state(2);
        s.replicas[0].record(Some(Scraped { running: 8.0, waiting: 9.0, kv: 0.95 }));
        assert!(!s.must_queue(|_| true), "replica 1 was never scraped: it takes the request");
        s.replicas[1].record(Some(Scraped { running: 8.0, waiting: 0.0, kv: 0.9 }));
        assert!(s.must_queue(|_| true));
        s.replicas[1].record(None);
        assert!(s.must_queue(|_| true), "one failed scrape keeps the last signals");
        s.replicas[1].record(None);
        assert!(!s.must_queue(|_| true), "failed scrapes fall back to the gateway's counts");
    }

    #[test]
    fn a_full_batch_is_saturated_until_a_request_ends() {
        let settings =
            InferenceSettings { saturated: Saturation { waiting: 0.0, kv_cache: 0.8 }, ..Default::default() };
        let s = Arc::new(InferenceState::new(settings, 1));
        // The replica queued once with 4 running: its batch is 4.
        s.replicas[0].record(Some(Scraped { running: 4.0, waiting: 2.0, kv: 0.3 }));
        s.replicas[0].record(Some(Scraped { running: 3.0, waiting: 0.0, kv: 0.3 }));
        // One place in the batch, and saturated only past 0 waiting: room for 2.
        assert_eq!(s.room(|_| true), 2);
        let sent: Vec<_> =
            (0..2).map(|_| Ticket::new(s.clone(), Demand { tokens: 100, ..Demand::default() })).collect();
        sent[0].charge(0);
        assert!(!s.must_queue(|_| true), "one request waits in the replica's queue: not past 0");
        sent[1].charge(0);
        assert!(s.must_queue(|_| true), "the requests sent since the scrape fill the batch and its queue");
        assert_eq!(s.room(|_| true), 0);
        drop(sent);
        assert!(!s.must_queue(|_| true), "its end frees the place before the next scrape");
    }

    /// Late binding: with the default saturation (5 waiting) a replica whose learned batch is
    /// taken, and one more waiting there, gets no further request: newcomers wait in the
    /// gateway. The seats counted are the gateway's requests sent and not ended, exactly, a
    /// retry moving its seat.
    #[test]
    fn a_request_waits_in_the_gateway_while_every_seat_is_taken() {
        let s = state(2);
        for r in &s.replicas {
            // Each queued once with 2 running: a batch of 2.
            r.record(Some(Scraped { running: 2.0, waiting: 1.0, kv: 0.1 }));
            r.record(Some(Scraped::default()));
        }
        let sent: Vec<_> =
            (0..6).map(|_| Ticket::new(s.clone(), Demand { tokens: 100, ..Demand::default() })).collect();
        for (n, t) in sent.iter().enumerate() {
            assert!(!s.must_queue(|_| true), "request {n}: a seat (or the one place behind them) is free");
            t.charge(n % 2);
        }
        assert_eq!((s.replicas[0].occupied(), s.replicas[1].occupied()), (3, 3));
        assert!(s.must_queue(|_| true), "2 running and 1 waiting on each: not saturated, but no seat");
        // A retry moves its seat: still 6 in all.
        sent[0].charge(1);
        assert_eq!((s.replicas[0].occupied(), s.replicas[1].occupied()), (2, 4));
        assert!(!s.must_queue(|_| true), "replica 0 has room again");
        drop(sent);
        assert_eq!((s.replicas[0].occupied(), s.replicas[1].occupied()), (0, 0), "sent less ended");
    }

    /// A seat granted to a waiter counts as taken until the request is sent: a second end on
    /// the replica does not grant it again, and the request sent there takes it over.
    #[tokio::test]
    async fn a_granted_seat_is_held_until_the_request_is_sent() {
        let s = state(1);
        s.replicas[0].record(Some(Scraped { running: 1.0, waiting: 1.0, kv: 0.1 }));
        s.replicas[0].record(Some(Scraped::default()));
        // A batch of 1, one waiting behind it: two requests take the replica.
        let mut running: Vec<_> = (0..2).map(|_| Ticket::new(s.clone(), Demand::default())).collect();
        running.iter().for_each(|t| t.charge(0));
        assert!(s.must_queue(|_| true));
        let first = enqueue(&s, "a", &Demand::default()).await;
        let second = enqueue(&s, "b", &Demand::default()).await;
        running.pop();
        let granted = first.await.unwrap().unwrap();
        assert_eq!((granted.replica, s.replicas[0].occupied()), (Some(0), 2), "its seat is held");
        assert_eq!(s.queue.len(), 1, "b still waits: the freed seat went to a");
        let t = Ticket::new(s.clone(), Demand::default());
        t.granted(granted);
        assert_eq!(t.choose(|_| true), Choice::Replica(0));
        t.charge(0);
        assert_eq!((s.replicas[0].occupied(), s.replicas[0].reserved.load(Ordering::Relaxed)), (2, 0));
        drop(t);
        assert_eq!(second.await.unwrap().unwrap().replica, Some(0), "a's end lets b go");
        assert_eq!(s.replicas[0].occupied(), 1, "b's grant dropped unsent: its seat is free again");
    }

    #[tokio::test]
    async fn an_ending_request_wakes_a_waiter_at_once() {
        let settings =
            InferenceSettings { saturated: Saturation { waiting: 0.0, kv_cache: 0.8 }, ..Default::default() };
        let s = Arc::new(InferenceState::new(settings, 1));
        s.replicas[0].record(Some(Scraped { running: 1.0, waiting: 1.0, kv: 0.1 }));
        s.replicas[0].record(Some(Scraped { running: 0.0, waiting: 0.0, kv: 0.0 }));
        // A batch of 1, and one more may wait there.
        let running: Vec<_> = (0..2).map(|_| Ticket::new(s.clone(), Demand::default())).collect();
        running.iter().for_each(|t| t.charge(0));
        assert!(s.must_queue(|_| true));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.queue.wait("k".into(), 0, None).await })
        };
        while s.queue.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(running.into_iter().next());
        assert!(waiter.await.unwrap().is_ok(), "granted by the end of the running request, no scrape");
    }

    /// Spawns a waiter for `demand` (under `key`) and returns once it is queued.
    async fn enqueue(
        s: &Arc<InferenceState>,
        key: &str,
        demand: &Demand,
    ) -> tokio::task::JoinHandle<Result<queue::Granted, queue::Refusal>> {
        let before = s.queue.len();
        let (q, key, affine) = (s.clone(), Arc::<str>::from(key), s.affine(demand));
        let h = tokio::spawn(async move { q.queue.wait(key, 0, affine).await });
        while s.queue.len() == before {
            tokio::task::yield_now().await;
        }
        h
    }

    #[tokio::test]
    async fn a_released_waiter_goes_where_its_conversation_is() {
        let settings =
            InferenceSettings { saturated: Saturation { waiting: 0.0, kv_cache: 0.8 }, ..Default::default() };
        let s = Arc::new(InferenceState::new(settings, 3));
        for r in &s.replicas {
            // A batch of 1, and one more may wait there: two requests saturate a replica.
            r.record(Some(Scraped { running: 1.0, waiting: 1.0, kv: 0.1 }));
            r.record(Some(Scraped::default()));
        }
        let convo =
            |c: u64, turns: u64| Demand { blocks: (0..turns * 8).map(|b| c * 1000 + b).collect(), ..Demand::default() };
        let mut running: Vec<Vec<Ticket>> = (0..3).map(|_| Vec::new()).collect();
        for (i, on) in running.iter_mut().enumerate() {
            // Conversation i's first turn went to replica i; then the replica filled up.
            for demand in [convo(i as u64, 1), Demand::default()] {
                let t = Ticket::new(s.clone(), demand);
                t.charge(i);
                on.push(t);
            }
        }
        assert!(s.must_queue(|_| true));
        // x continues conversation 0 (on replica 0), then y conversation 2 (on replica 2).
        let x = enqueue(&s, "x", &convo(0, 2)).await;
        let y_demand = convo(2, 2);
        let y = enqueue(&s, "y", &y_demand).await;
        // Replica 2 frees a place: y goes there, though x is first in turn.
        running[2].pop();
        let granted = y.await.unwrap().unwrap();
        assert_eq!(granted.replica, Some(2));
        assert_eq!(s.queue.len(), 1, "x still waits for its replica");
        let y_ticket = Ticket::new(s.clone(), y_demand);
        y_ticket.granted(granted);
        assert_eq!(y_ticket.choose(|_| true), Choice::Replica(2));
        y_ticket.charge(2);
        // Replica 1 frees a place and no waiter is affine to it: x takes it rather than wait.
        running[1].pop();
        assert_eq!(x.await.unwrap().unwrap().replica, Some(1));
    }

    #[test]
    fn scrape_rounds_are_claimed_once_per_interval() {
        let s = state(1);
        assert!(s.claim_scrape(1000));
        assert!(!s.claim_scrape(1100));
        assert!(!s.claim_scrape(1500), "the first round still runs");
        s.round_done();
        assert!(s.claim_scrape(1500));
    }
}
