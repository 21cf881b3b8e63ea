//! The inference scorer as a pure function: what each replica looks like now (scraped queue
//! and KV use corrected by the gateway's own sends, in-flight tokens, prefix match, pending
//! prefill, the predicted wait for a decode seat) → a choice.
//!
//! **With a prompt, while the fleet is calm** (the admission queue held no one within
//! `CALM_AFTER`, `calm` true, see `fleet/inference/mod.rs`): the unsaturated candidate with the
//! shortest predicted time to first token, [`View::ttft`], in prefill tokens:
//!
//! seat wait + pending prefill + own prompt × (1 − held share)
//!
//! In the replica model (docs/sim.md) a request waits for a decode seat (`seats.rs` predicts
//! when one frees), then for the step under way and the prompts admitted with it, which are
//! prefilled whole before any of them gets a token (the gateway's requests there with no answer
//! byte yet), then for its own uncached prompt. The trace of the slowest requests showed exactly
//! these three (docs/benchmarks.md, fleet section). Ties go to the less pressed replica.
//!
//! **Otherwise** (no prompt estimate, as when the queue releases room; or not calm: the replicas
//! are still full of what the queue released, and a conversation stays where it is held):
//!
//! score = prefix × (1 − prefill wait / max wait) + queue × (1 − pressure / max) + kv_cache × (1 − KV use)
//!
//! where the prefix term is the prefill wait ([`View::prefill_wait`]) only while calm with no
//! candidate saturated or with a request waiting for a seat, else the match fraction
//! (max: the highest pressure of the unsaturated candidates; none pressed: 1). Relative to the
//! most pressed replica rather than to the spread: with min–max scaling a difference of a few
//! tokens between busy replicas would swing the whole queue weight and outvote any prefix.
//! Pressure = in-flight tokens + waiting requests × [`TOKENS_PER_WAITING`]. A replica is
//! saturated past `saturated.waiting` waiting requests or `saturated.kv_cache` KV use;
//! saturated replicas are chosen only when all are (after the admission queue). The match
//! fraction counts only while the replica's pressure is at most [`AFFINITY_FACTOR`] × the least
//! pressure + [`AFFINITY_SLACK`] tokens.

/// Tokens one waiting request stands for in the pressure (a typical prompt + answer).
pub const TOKENS_PER_WAITING: f64 = 1024.0;
/// How much more loaded than the least loaded replica an affine one may be.
pub const AFFINITY_FACTOR: f64 = 1.3;
/// Pressure any replica may carry before the factor applies, in tokens (so a nearly idle
/// fleet keeps affinity).
pub const AFFINITY_SLACK: f64 = 2048.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub prefix: f64,
    pub queue: f64,
    pub kv_cache: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    /// Waiting requests past which a replica is saturated.
    pub waiting: f64,
    /// KV use (0..1) past which a replica is saturated.
    pub kv_cache: f64,
}

/// One replica as the scorer sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct View {
    /// Healthy, circuit closed, not yet tried by this request.
    pub candidate: bool,
    /// Requests waiting in the replica's own queue (scraped, corrected).
    pub waiting: f64,
    /// KV-cache use, 0..1.
    pub kv: f64,
    /// Tokens (estimated prompt + max_tokens) the gateway has in flight there.
    pub inflight_tokens: f64,
    /// Fraction of the request's prompt blocks the gateway already sent there, 0..1.
    pub prefix: f64,
    /// Uncached prompt tokens of the gateway's requests there still in prefill.
    pub prefill_tokens: f64,
    /// The request's own estimated prompt tokens (the same in every view).
    pub prompt_tokens: f64,
    /// The predicted wait for a decode seat there, in prefill tokens (`seats.rs`; 0 until the
    /// replica's step and prefill rates are learned).
    pub seat_tokens: f64,
}

impl View {
    pub fn saturated(&self, s: &Saturation) -> bool {
        self.waiting > s.waiting || self.kv > s.kv_cache
    }

    /// The prefill a request waits for there before its first token, in tokens: the replica
    /// prefills what it admitted, whole, before the step that yields their first tokens
    /// (docs/sim.md), so a request waits for the gateway's requests there that have no first
    /// token yet, plus its own prompt less what the replica holds. The held part counts even
    /// on a replica past the affinity bound: it is prefill saved there all the same.
    fn prefill_wait(&self) -> f64 {
        self.prefill_tokens + self.prompt_tokens * (1.0 - self.prefix.clamp(0.0, 1.0))
    }

    fn pressure(&self) -> f64 {
        self.inflight_tokens + self.waiting * TOKENS_PER_WAITING
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The best unsaturated replica.
    Replica(usize),
    /// Every candidate is saturated; the least pressed one, if the caller must send anyway.
    Saturated(usize),
    /// No candidate at all.
    None,
}

impl View {
    /// The predicted time to first token there, in prefill tokens: the wait for a decode seat,
    /// the prefill pending there (prefilled before or with this request), its own uncached
    /// prompt.
    pub fn ttft(&self) -> f64 {
        self.seat_tokens.max(0.0) + self.prefill_wait()
    }
}

/// The replica for a request. With a prompt estimate, while the fleet is calm and some
/// candidate is unsaturated: the unsaturated one with the shortest predicted time to first token
/// ([`View::ttft`]; ties: the less pressed, then the lower index). Otherwise (no prompt, or the
/// admission queue held someone lately) the weighted score below.
pub fn choose(views: &[View], w: &Weights, s: &Saturation, calm: bool) -> Choice {
    let has_prompt = views.iter().any(|v| v.prompt_tokens > 0.0);
    if calm && has_prompt {
        let open = views.iter().enumerate().filter(|(_, v)| v.candidate && !v.saturated(s));
        let best = open.min_by(|a, b| {
            a.1.ttft()
                .total_cmp(&b.1.ttft())
                .then_with(|| a.1.pressure().total_cmp(&b.1.pressure()))
                .then(a.0.cmp(&b.0))
        });
        if let Some((i, _)) = best {
            return Choice::Replica(i);
        }
    }
    weighted(views, w, s, calm)
}

fn weighted(views: &[View], w: &Weights, s: &Saturation, calm: bool) -> Choice {
    let candidates = || views.iter().enumerate().filter(|(_, v)| v.candidate);
    let open: Vec<(usize, &View)> = candidates().filter(|(_, v)| !v.saturated(s)).collect();
    if open.is_empty() {
        return match candidates().min_by(|a, b| a.1.pressure().total_cmp(&b.1.pressure())) {
            Some((i, _)) => Choice::Saturated(i),
            None => Choice::None,
        };
    }
    let least = open.iter().map(|(_, v)| v.pressure()).fold(f64::INFINITY, f64::min);
    let most = open.iter().map(|(_, v)| v.pressure()).fold(0.0, f64::max);
    let affine = |v: &View| if v.pressure() <= AFFINITY_FACTOR * least + AFFINITY_SLACK { v.prefix } else { 0.0 };
    // Prefill is weighed while every candidate has a free seat in its batch (none saturated,
    // none with a request waiting) and the caller says the fleet is calm: once requests wait
    // for seats, the pending prefill counts the ones queued there, and what the held prefix
    // saves the whole fleet (less prefill, more seats free sooner) matters more than one wait.
    let weigh_prefill = calm && open.len() == candidates().count() && open.iter().all(|(_, v)| v.waiting <= 0.0);
    let most_wait = open.iter().map(|(_, v)| v.prefill_wait()).fold(0.0, f64::max);
    let score = |v: &View| {
        // Prefix affinity in prefill time when there is any to weigh, else the match fraction.
        let prefix = if weigh_prefill && most_wait > 0.0 { 1.0 - v.prefill_wait() / most_wait } else { affine(v) };
        let queue = if most > 0.0 { 1.0 - v.pressure() / most } else { 1.0 };
        w.prefix * prefix + w.queue * queue + w.kv_cache * (1.0 - v.kv.clamp(0.0, 1.0))
    };
    // Ties go to the less pressed replica, then the lower index.
    let best = open.iter().max_by(|a, b| {
        score(a.1).total_cmp(&score(b.1)).then_with(|| b.1.pressure().total_cmp(&a.1.pressure())).then(b.0.cmp(&a.0))
    });
    best.map_or(Choice::None, |(i, _)| Choice::Replica(*i))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W: Weights = Weights { prefix: 3.0, queue: 2.0, kv_cache: 2.0 };
    const S: Saturation = Saturation { waiting: 5.0, kv_cache: 0.8 };

    fn idle() -> View {
        View { candidate: true, ..View::default() }
    }

    #[test]
    fn prefers_the_replica_holding_the_prefix() {
        let mut v = vec![idle(); 3];
        v[2].prefix = 0.9;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(2));
    }

    #[test]
    fn affinity_yields_to_load_and_saturation() {
        let mut v = vec![idle(); 3];
        v[2].prefix = 1.0;
        v[2].inflight_tokens = 20_000.0;
        v[0].inflight_tokens = 2_000.0;
        v[1].inflight_tokens = 3_000.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(0), "far above 1.5 × least + slack");
        let mut v = vec![idle(); 3];
        v[2].prefix = 1.0;
        v[2].waiting = 6.0;
        v[1].kv = 0.5;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(0), "saturated by its queue");
    }

    /// A replica holding the prompt saves its prefill even when it carries more tokens than the
    /// affinity bound allows: its time to first token is shorter than a cold replica's.
    #[test]
    fn a_held_prompt_is_saved_prefill_past_the_affinity_bound() {
        let mut v = vec![idle(); 3];
        for x in v.iter_mut() {
            x.prompt_tokens = 2_000.0;
        }
        v[0].prefix = 1.0;
        v[0].inflight_tokens = 20_000.0;
        v[1].inflight_tokens = 2_000.0;
        v[2].inflight_tokens = 3_000.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(0), "2,000 tokens of prefill saved there");
        // Another long prompt in prefill there outweighs what it saves.
        v[0].prefill_tokens = 2_500.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(1));
    }

    /// Three idle replicas, a 2,000-token prompt held whole on replica 0, where another
    /// 2,500 tokens are being prefilled.
    fn held_behind_a_long_prefill() -> Vec<View> {
        let mut v = vec![idle(); 3];
        for x in v.iter_mut() {
            x.prompt_tokens = 2_000.0;
        }
        v[0].prefix = 1.0;
        v[0].prefill_tokens = 2_500.0;
        v
    }

    /// A saturated replica is left out while another is open, though it holds the prompt.
    #[test]
    fn a_saturated_replica_is_left_out_though_it_holds_the_prompt() {
        let mut v = held_behind_a_long_prefill();
        v[0].prefill_tokens = 0.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(0), "nothing to wait for where it is held");
        v[0].waiting = 6.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(1), "saturated by its queue");
    }

    /// The predicted wait for a seat counts with the prefill: a held prompt is left only when
    /// the seat there frees later than the prompt takes to prefill elsewhere.
    #[test]
    fn the_seat_wait_counts_in_the_predicted_time_to_first_token() {
        let mut v = held_behind_a_long_prefill();
        v[0].prefill_tokens = 0.0;
        v[0].seat_tokens = 1_500.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(0), "1,500 < 2,000 tokens of prefill elsewhere");
        v[0].seat_tokens = 2_500.0;
        v[2].seat_tokens = 100.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(1), "the seat there frees later: a free seat elsewhere");
        assert_eq!(v[0].ttft(), 2_500.0);
        assert_eq!(v[2].ttft(), 2_100.0);
    }

    /// Right after the admission queue held requests (not calm) the held prompt counts as its
    /// match fraction too, though no replica is saturated at this instant.
    #[test]
    fn after_a_queue_the_prompt_stays_where_it_is_held() {
        let v = held_behind_a_long_prefill();
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(1), "calm: the shorter wait");
        assert_eq!(choose(&v, &W, &S, false), Choice::Replica(0), "queued lately: the held prompt");
    }

    #[test]
    fn queue_and_kv_spread_load() {
        let mut v = vec![idle(); 3];
        v[0].inflight_tokens = 5000.0;
        v[1].kv = 0.6;
        assert_eq!(choose(&v, &W, &S, true), Choice::Replica(2));
    }

    #[test]
    fn all_saturated_and_no_candidates() {
        let mut v = vec![idle(); 2];
        v[0].kv = 0.9;
        v[0].inflight_tokens = 10.0;
        v[1].waiting = 9.0;
        assert_eq!(choose(&v, &W, &S, true), Choice::Saturated(0));
        v.iter_mut().for_each(|x| x.candidate = false);
        assert_eq!(choose(&v, &W, &S, true), Choice::None);
    }
}
