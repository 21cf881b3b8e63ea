//! LoRA adapters behind a fleet (`providers[].lora`): which replica serves which adapter
//! (its `/v1/models`, entries with `parent` set) and which it has hot (`vllm:lora_requests_info`:
//! running + waiting adapters), refreshed by [`learn`] from the inference scrape service; and
//! the preference the pick path gives an adapter's requests ([`choose`]): only replicas that
//! serve it, those with it hot first, a stable one among them (ketama on the adapter name),
//! another serving replica when those are over the bounded load.
//!
//! A replica never learned counts as serving everything and having nothing hot; a failed
//! refresh keeps the last good view, so a broken `/v1/models` or `/metrics` can cost affinity
//! but never refuse a request.

pub mod learn;
pub mod parse;

use super::ketama::Ring;
use super::select::{self, Balance, Slot};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// `providers[].lora`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// `refresh` (default 5s): time between two rounds of learning.
    pub refresh: Duration,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings { refresh: Duration::from_secs(5) }
    }
}

/// Adapters remembered per replica as sent by the gateway (most recent last).
const RECENT: usize = 64;

/// What one replica is known to do with adapters.
#[derive(Debug, Default)]
pub struct ReplicaAdapters {
    /// Adapters its last good model list named; `None`: never learned.
    served: Mutex<Option<HashSet<String>>>,
    /// Its last good metrics: running and waiting adapters, and `max_lora`.
    scraped: Mutex<parse::LoraInfo>,
    /// Adapters the gateway sent it, least recent first. vLLM keeps the `max_lora` most
    /// recently used loaded (an LRU, like the sim's), so the last `max_lora` of these are
    /// loaded there as far as this gateway knows, idle or not (the metrics name only the
    /// running and waiting ones).
    recent: Mutex<VecDeque<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaAdapters {
    /// A good model list replaces the served set.
    pub fn record_served(&self, adapters: HashSet<String>) {
        *lock(&self.served) = Some(adapters);
    }

    /// Good metrics replace the running, waiting and `max_lora` view.
    pub fn record_hot(&self, info: parse::LoraInfo) {
        *lock(&self.scraped) = info;
    }

    fn lists(&self, model: &str) -> Option<bool> {
        lock(&self.served).as_ref().map(|s| s.contains(model))
    }

    /// Adapters thought loaded: running or waiting, or among the `max_lora` (1 when unknown)
    /// the gateway sent most recently.
    fn loaded(&self) -> HashSet<String> {
        let scraped = lock(&self.scraped);
        let max = scraped.max.unwrap_or(1).max(1);
        let mut out = scraped.hot.clone();
        out.extend(lock(&self.recent).iter().rev().take(max).cloned());
        out
    }

    /// For a request's plan: whether `model` is among [`Self::loaded`], and whether those are
    /// fewer than `max_lora` (unknown: no). Counted in place: the pick path asks this per
    /// request and replica, and the set itself is only wanted by `/health`. `recent` holds no
    /// name twice, so the loaded ones are the hot ones plus the recent ones not hot.
    fn holds(&self, model: &str) -> (bool, bool) {
        let scraped = lock(&self.scraped);
        let recent = lock(&self.recent);
        let newest = || recent.iter().rev().take(scraped.max.unwrap_or(1).max(1));
        let loaded = scraped.hot.contains(model) || newest().any(|m| m == model);
        let count = scraped.hot.len() + newest().filter(|m| !scraped.hot.contains(*m)).count();
        (loaded, scraped.max.is_some_and(|max| count < max))
    }

    fn note_sent(&self, model: &str) {
        let mut recent = lock(&self.recent);
        if recent.back().is_some_and(|m| m == model) {
            return;
        }
        recent.retain(|m| m != model);
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(model.to_string());
    }

    /// The adapters it is known to serve (sorted), for `/health`; `None`: never learned.
    pub fn served(&self) -> Option<Vec<String>> {
        lock(&self.served).as_ref().map(|s| sorted(s.iter()))
    }

    /// Adapters thought loaded, sorted, for `/health`.
    pub fn hot(&self) -> Vec<String> {
        sorted(self.loaded().iter())
    }
}

fn sorted<'a>(it: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = it.cloned().collect();
    v.sort_unstable();
    v
}

/// The adapter state of one provider (rebuilt on reload and on a discovered change, like
/// the provider: indices follow its backends).
#[derive(Debug)]
pub struct LoraState {
    pub settings: LoraSettings,
    pub replicas: Vec<ReplicaAdapters>,
    /// When the next round is due (clock ms); 0: at start.
    next_round: AtomicU64,
    /// A round is running (the next one waits for it).
    running: AtomicBool,
}

/// Where an adapter may go, where it is loaded, and which replicas have a free adapter slot,
/// per backend index.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub serving: Vec<bool>,
    pub hot: Vec<bool>,
    pub free: Vec<bool>,
}

impl LoraState {
    pub fn new(settings: LoraSettings, backends: usize) -> Self {
        LoraState {
            settings,
            replicas: (0..backends).map(|_| ReplicaAdapters::default()).collect(),
            next_round: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }

    /// True (and the round is the caller's) when a round is due and none is running; the
    /// caller then calls [`LoraState::round_done`].
    pub fn claim_round(&self, now_ms: u64) -> bool {
        if now_ms < self.next_round.load(Ordering::Relaxed) || self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.next_round.store(now_ms + self.settings.refresh.as_millis() as u64, Ordering::Relaxed);
        true
    }

    pub fn round_done(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// `None` when no replica is known to list `model` as an adapter (a base model, or
    /// nothing learned yet): the request is chosen as any other.
    pub fn plan(&self, model: &str) -> Option<Plan> {
        let lists: Vec<Option<bool>> = self.replicas.iter().map(|r| r.lists(model)).collect();
        if !lists.contains(&Some(true)) {
            return None;
        }
        let holds: Vec<(bool, bool)> = self.replicas.iter().map(|r| r.holds(model)).collect();
        Some(Plan {
            serving: lists.iter().map(|l| l.unwrap_or(true)).collect(),
            hot: holds.iter().map(|h| h.0).collect(),
            free: holds.iter().map(|h| h.1).collect(),
        })
    }

    /// The request for `model` went to backend `i`: the most recently used adapter there.
    pub fn note_sent(&self, i: usize, model: &str) {
        if let Some(r) = self.replicas.get(i) {
            r.note_sent(model);
        }
    }
}

/// The ketama key of an adapter: the same point as `hash_key: [model]`.
pub fn key(model: &str) -> Vec<u8> {
    [b"m:".as_slice(), model.as_bytes()].concat()
}

/// An adapter's backend: the first replica on the ring from `key` that serves it, has it
/// loaded and is under the bounded load (`epsilon`; none: never full); else the first such
/// one with a free adapter slot (nothing evicted); else the bounded-load ketama choice among
/// the replicas serving it (the least loaded when all are full). `None` when no replica
/// serving it is usable and untried.
pub fn choose(
    plan: &Plan,
    ring: &Ring,
    key: &[u8],
    epsilon: Option<f64>,
    tried: &[usize],
    slots: &[Slot],
) -> Option<usize> {
    let serving = |i: usize| plan.serving.get(i).copied().unwrap_or(false);
    let candidate = |i: usize| serving(i) && slots.get(i).is_some_and(|s| s.usable) && !tried.contains(&i);
    let (total, weight) = slots.iter().filter(|s| s.usable).fold((0, 0), |(t, w), s| (t + s.inflight, w + s.weight));
    let fits =
        |i: usize| epsilon.is_none_or(|eps| slots[i].inflight < select::bound(total, slots[i].weight, weight, eps));
    let hot = |i: usize| plan.hot.get(i).copied().unwrap_or(false);
    let free = |i: usize| plan.free.get(i).copied().unwrap_or(false);
    if let Some(i) = ring.walk(key).find(|&i| candidate(i) && hot(i) && fits(i)) {
        return Some(i);
    }
    if let Some(i) = ring.walk(key).find(|&i| candidate(i) && free(i) && fits(i)) {
        return Some(i);
    }
    let skip: Vec<usize> = (0..slots.len()).filter(|&i| tried.contains(&i) || !serving(i)).collect();
    let req = select::Request { balance: Balance::Ketama, ring, key, epsilon, cursor: 0, tried: &skip };
    select::choose(&req, slots)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fleet::select::fixtures::{ring, slots};

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn info(hot: &[&str], max: usize) -> parse::LoraInfo {
        parse::LoraInfo { hot: set(hot), max: Some(max) }
    }

    #[test]
    fn plan_knows_adapters_only_once_listed() {
        let s = LoraState::new(LoraSettings::default(), 3);
        assert_eq!(s.plan("a"), None, "nothing learned");
        s.replicas[0].record_served(set(&["a", "b", "c"]));
        s.replicas[1].record_served(set(&["b"]));
        // Replica 2 never answered: it may serve anything.
        assert_eq!(s.plan("a").unwrap().serving, vec![true, false, true]);
        assert_eq!(s.plan("base"), None);
        s.replicas[1].record_hot(info(&["b"], 2));
        s.note_sent(0, "b");
        let p = s.plan("b").unwrap();
        assert_eq!((p.hot, p.free), (vec![true, true, false], vec![false, true, false]));
        // Replica 0 holds 2: the two it was sent last (metrics naming none running).
        s.replicas[0].record_hot(info(&[], 2));
        s.note_sent(0, "a");
        s.note_sent(0, "c");
        let p = s.plan("b").unwrap();
        assert_eq!((p.hot, p.free), (vec![false, true, false], vec![false, true, false]), "b was evicted");
        assert_eq!(s.replicas[0].hot(), vec!["a", "c"]);
    }

    /// What the plan is told agrees with the loaded set `/health` shows, overlaps included.
    #[test]
    fn holds_counts_the_loaded_set_in_place() {
        let r = ReplicaAdapters::default();
        assert_eq!(r.holds("a"), (false, false), "max_lora unknown: no free slot");
        r.record_hot(info(&["a", "b"], 3));
        for sent in ["c", "a", "d", "c"] {
            r.note_sent(sent);
            let loaded = r.loaded();
            for m in ["a", "b", "c", "d", "e"] {
                assert_eq!(r.holds(m), (loaded.contains(m), loaded.len() < 3), "after {sent}, {m}: {loaded:?}");
            }
        }
    }

    #[test]
    fn hot_replica_first_then_serving_ones_never_others() {
        let r = ring(3);
        let k = key("a");
        let all = Plan { serving: vec![true, true, false], hot: vec![false; 3], free: vec![false; 3] };
        // Not hot anywhere: the ketama choice among the two serving replicas, stable.
        let first = choose(&all, &r, &k, Some(0.25), &[], &slots(&[0, 0, 0])).unwrap();
        assert!(first < 2);
        assert_eq!(choose(&all, &r, &k, Some(0.25), &[], &slots(&[0, 0, 0])), Some(first));
        // Hot on the other one: it wins over the ring's first.
        let other = 1 - first;
        let mut hot = all.clone();
        hot.hot[other] = true;
        assert_eq!(choose(&hot, &r, &k, Some(0.25), &[], &slots(&[0, 0, 0])), Some(other));
        // Hot replica over the bound (4 of 6 in flight, bound 2): spread to the other serving one.
        let mut busy = [1, 1, 0];
        busy[other] = 4;
        assert_eq!(choose(&hot, &r, &k, Some(0.25), &[], &slots(&busy)), Some(first));
        // Without bounded load the hot one keeps it.
        assert_eq!(choose(&hot, &r, &k, None, &[], &slots(&busy)), Some(other));
        // Never the replica that does not serve it, even when both serving ones are tried.
        assert_eq!(choose(&hot, &r, &k, Some(0.25), &[0, 1], &slots(&[0, 0, 0])), None);
        let mut down = slots(&[0, 0, 0]);
        down[other].usable = false;
        assert_eq!(choose(&hot, &r, &k, Some(0.25), &[], &down), Some(first));
        // Loaded nowhere: a serving replica with a free slot beats the ring's first.
        let mut free = all.clone();
        free.free[other] = true;
        assert_eq!(choose(&free, &r, &k, Some(0.25), &[], &slots(&[0, 0, 0])), Some(other));
    }
}
