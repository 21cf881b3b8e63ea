//! `providers[].pool`: a cap on the connections to one backend, with a bounded, timed queue in
//! front of it. A request holds a [`Slot`] from before it connects until it ends; the slot's
//! index names the one upstream connection it may use (kept idle between requests only for
//! the first `max_idle` indices), so connections to a backend never exceed `max_connections`
//! (docs/pingora.md, "Upstream connection pools", says why the cap lives here and not in
//! Pingora's pool). Waiting is a future: a client that leaves drops it and its place.

use super::Backend;
use crate::observe::metrics::metrics;
use prometheus::IntGauge;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The validated `providers[].pool` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections (requests in flight) to one backend at once.
    pub max_connections: usize,
    /// Connections kept open between requests, per backend (≤ `max_connections`).
    pub max_idle: usize,
    /// Requests waiting for a connection, per backend; beyond: 503.
    pub queue: usize,
    /// Longest wait in the queue; beyond: 503.
    pub queue_timeout: Duration,
}

impl PoolSettings {
    pub const DEFAULT_QUEUE: usize = 100;
    pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

    /// `Retry-After` of a refusal: the queue timeout, in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.queue_timeout.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// Why a request got no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `queue` requests were already waiting.
    QueueFull,
    /// It waited `queue_timeout`.
    Timeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::Timeout => "queue_timeout",
        }
    }
}

/// In use, idle (as far as the gateway can tell) and waiting, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub in_use: usize,
    pub idle: usize,
    pub waiting: usize,
}

#[derive(Debug)]
struct State {
    /// Per slot index: `None` in use, `Some(released)` free (`released`: when its last request
    /// ended, `None` if it never ran one).
    free: Vec<Option<Option<Instant>>>,
    waiters: VecDeque<(u64, oneshot::Sender<usize>)>,
    next_waiter: u64,
}

/// Told the counts after every change (the metrics).
pub type Observer = Box<dyn Fn(PoolCounts) + Send + Sync>;

/// The slots of one backend.
pub struct ConnPool {
    pub settings: PoolSettings,
    /// How long Pingora keeps an idle connection (`providers[].timeouts.idle`): a slot released
    /// longer ago counts as holding none.
    idle_timeout: Duration,
    state: Mutex<State>,
    /// Called outside the lock.
    observer: Option<Observer>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("settings", &self.settings).field("counts", &self.counts()).finish()
    }
}

/// The right to one connection to the backend, and which one (`index`); freed on drop.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<ConnPool>,
    index: usize,
}

impl Slot {
    /// 0 ≤ index < `max_connections`; the connection of this slot only.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this slot's connection may stay open after the request (index < `max_idle`).
    pub fn keeps_idle(&self) -> bool {
        self.index < self.pool.settings.max_idle
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

impl ConnPool {
    pub fn new(settings: PoolSettings, idle_timeout: Duration, observer: Option<Observer>) -> Self {
        ConnPool {
            settings,
            idle_timeout,
            state: Mutex::new(State {
                free: vec![Some(None); settings.max_connections],
                waiters: VecDeque::new(),
                next_waiter: 0,
            }),
            observer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the slot table half-changed (every
        // change is one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot now (the lowest index: connections kept idle are reused first), else a
    /// place in the queue until one is released, refused when the queue is full or the wait
    /// exceeds `queue_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let (id, rx, counts) = {
            let mut s = self.lock();
            if s.waiters.is_empty() {
                if let Some(index) = s.free.iter().position(Option::is_some) {
                    s.free[index] = None;
                    let counts = self.counts_for_observer(&s);
                    drop(s);
                    self.tell(counts);
                    return Ok(Slot { pool: self.clone(), index });
                }
            }
            if s.waiters.len() >= self.settings.queue {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_waiter;
            s.next_waiter += 1;
            s.waiters.push_back((id, tx));
            (id, rx, self.counts_for_observer(&s))
        };
        self.tell(counts);
        let mut wait = Waiting { pool: self, id, rx: Some(rx) };
        let handed = match wait.rx.as_mut() {
            Some(rx) => tokio::time::timeout(self.settings.queue_timeout, rx).await,
            None => return Err(Refusal::Timeout),
        };
        match handed {
            Ok(Ok(index)) => {
                wait.rx = None;
                Ok(Slot { pool: self.clone(), index })
            }
            // The sender went away without a slot (cannot happen while the pool lives), or
            // the wait timed out: `wait`'s drop leaves the queue and returns a slot handed
            // over in the meantime.
            Ok(Err(_)) | Err(_) => Err(Refusal::Timeout),
        }
    }

    /// Hands the slot to the first waiter still waiting, else marks it free.
    fn release(&self, mut index: usize) {
        let counts = {
            let mut s = self.lock();
            loop {
                let Some((_, tx)) = s.waiters.pop_front() else {
                    if let Some(f) = s.free.get_mut(index) {
                        *f = Some(Some(Instant::now()));
                    }
                    break;
                };
                match tx.send(index) {
                    Ok(()) => break,
                    Err(back) => index = back,
                }
            }
            self.counts_for_observer(&s)
        };
        self.tell(counts);
    }

    pub fn counts(&self) -> PoolCounts {
        self.counts_in(&self.lock())
    }

    /// The counts of a locked state, taken by the change that holds the lock rather than by
    /// locking again after it; `None` when nobody observes.
    fn counts_for_observer(&self, s: &State) -> Option<PoolCounts> {
        self.observer.as_ref().map(|_| self.counts_in(s))
    }

    fn counts_in(&self, s: &State) -> PoolCounts {
        let now = Instant::now();
        let in_use = s.free.iter().filter(|f| f.is_none()).count();
        let idle = s
            .free
            .iter()
            .take(self.settings.max_idle)
            .filter(|f| matches!(f, Some(Some(at)) if now.duration_since(*at) < self.idle_timeout))
            .count();
        PoolCounts { in_use, idle, waiting: s.waiters.len() }
    }

    fn observe(&self) {
        if let Some(o) = &self.observer {
            o(self.counts());
        }
    }

    /// Tells the observer counts taken under the lock (called after it is released).
    fn tell(&self, counts: Option<PoolCounts>) {
        if let (Some(o), Some(c)) = (&self.observer, counts) {
            o(c);
        }
    }
}

/// Gives each (new, not yet shared) backend its pool under `settings` (none: no cap), with
/// `idle` the provider's `timeouts.idle`. Every place that makes backends calls this: the
/// config's compilation and a changed member set (`super::members`).
pub fn attach(provider: &str, backends: &mut [Arc<Backend>], settings: Option<PoolSettings>, idle: Duration) {
    let Some(settings) = settings else { return };
    for b in backends.iter_mut() {
        let observer = gauges(provider, b.addr);
        let Some(b) = Arc::get_mut(b) else { continue };
        b.pool = Some(Arc::new(ConnPool::new(settings, idle, Some(observer))));
    }
}

/// `mcas_upstream_pool_connections{provider, backend, state}` of one backend: its three
/// children are bound at the pool's first change (a series appears once something happened,
/// as with a label lookup) and set through the held handles after that, as `observe/bound.rs`
/// does for the request path's series.
fn gauges(provider: &str, addr: SocketAddr) -> Observer {
    let labels = [provider.to_string(), addr.to_string()];
    let bound: OnceLock<Option<[IntGauge; 3]>> = OnceLock::new();
    Box::new(move |c| {
        let g =
            bound.get_or_init(|| {
                let m = metrics()?;
                Some(["in_use", "idle", "waiting"].map(|state| {
                    m.pool_connections.with_label_values(&[labels[0].as_str(), labels[1].as_str(), state])
                }))
            });
        let Some([in_use, idle, waiting]) = g else { return };
        in_use.set(c.in_use as i64);
        idle.set(c.idle as i64);
        waiting.set(c.waiting as i64);
    })
}

/// A place in the queue; dropping it (timeout, or the client left and the request's future
/// was dropped) removes it, and passes on a slot that was handed to it meanwhile.
struct Waiting<'a> {
    pool: &'a Arc<ConnPool>,
    id: u64,
    rx: Option<oneshot::Receiver<usize>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        self.pool.lock().waiters.retain(|(id, _)| *id != self.id);
        if let Ok(index) = rx.try_recv() {
            self.pool.release(index);
        } else {
            self.pool.observe();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pool(max: usize, idle: usize, queue: usize, timeout_ms: u64) -> Arc<ConnPool> {
        let settings = PoolSettings {
            max_connections: max,
            max_idle: idle,
            queue,
            queue_timeout: Duration::from_millis(timeout_ms),
        };
        Arc::new(ConnPool::new(settings, Duration::from_secs(60), None))
    }

    /// A request that waits in `p`'s queue, once the queue holds `n`; its task ends with the
    /// index of the slot it got.
    async fn queued(p: &Arc<ConnPool>, n: usize) -> tokio::task::JoinHandle<Result<usize, Refusal>> {
        let task = tokio::spawn({
            let p = p.clone();
            async move { p.acquire().await.map(|s| s.index()) }
        });
        while p.counts().waiting < n {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn slots_are_capped_and_the_lowest_free_index_is_reused() {
        let p = pool(2, 1, 0, 50);
        let a = p.acquire().await.unwrap();
        let b = p.acquire().await.unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        assert!(a.keeps_idle() && !b.keeps_idle());
        assert_eq!(p.acquire().await.unwrap_err(), Refusal::QueueFull, "queue 0: refused at once");
        assert_eq!(p.counts(), PoolCounts { in_use: 2, idle: 0, waiting: 0 });
        drop(a);
        assert_eq!(p.counts(), PoolCounts { in_use: 1, idle: 1, waiting: 0 });
        assert_eq!(p.acquire().await.unwrap().index(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_released_slot_in_order() {
        let p = pool(1, 1, 2, 10_000);
        let held = p.acquire().await.unwrap();
        let first = queued(&p, 1).await;
        let second = queued(&p, 2).await;
        assert_eq!(p.acquire().await.unwrap_err(), Refusal::QueueFull);
        drop(held);
        assert_eq!(first.await.unwrap(), Ok(0));
        assert_eq!(second.await.unwrap(), Ok(0));
        assert_eq!(p.counts().in_use, 0);
    }

    #[tokio::test]
    async fn a_wait_times_out_and_leaves_the_queue() {
        let p = pool(1, 1, 1, 20);
        let _held = p.acquire().await.unwrap();
        assert_eq!(p.acquire().await.unwrap_err(), Refusal::Timeout);
        assert_eq!(p.counts().waiting, 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_frees_its_place_and_loses_no_slot() {
        let p = pool(1, 1, 1, 10_000);
        let held = p.acquire().await.unwrap();
        let waiter = queued(&p, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(p.counts().waiting, 0, "the place is free again");
        drop(held);
        assert_eq!(p.counts().in_use, 0, "the released slot went to nobody");
        assert!(p.acquire().await.is_ok());
    }

    #[test]
    fn retry_after_rounds_the_queue_timeout_up() {
        let s =
            |ms| PoolSettings { max_connections: 1, max_idle: 1, queue: 1, queue_timeout: Duration::from_millis(ms) };
        assert_eq!(s(100).retry_after_secs(), 1);
        assert_eq!(s(2500).retry_after_secs(), 3);
    }
}
