//! The admission queue of a provider with `balance: inference`: requests wait here, not in
//! vLLM's queue, while no replica has a free seat or every one is saturated (`super`). Bounded (`queue.max`), with a deadline
//! (`queue.timeout`); the highest `keys[].priority` goes first, and within a priority keys
//! take turns (a key with many waiting requests does not starve one with a single request).
//! A waiter whose future is dropped (its client left) leaves the queue at once.
//!
//! Room is granted for a replica ([`AdmissionQueue::grant_for`]): within the highest priority,
//! the first key in turn with a waiter *affine* to that replica (the gateway sent it the
//! waiter's conversation, so its prompt is mostly cached there) goes, then one affine to no
//! replica, and only then the next in turn whatever its affinity. So a released request lands
//! where its prefix is cached instead of being prefilled again wherever room came free. Room
//! is never left unused while anyone waits, and a waiter affine to a busy replica is served in
//! turn among those affine to it (as in that replica's own queue) or by room nobody else fits;
//! the deadline bounds every wait. There is no earlier escape to any replica: letting waiters
//! past half (or 90 % of) the deadline take any room cost 2 to 4 points of prefix hits and a
//! longer tail at 1.2x the fleet's capacity, where most waiters are that old
//! (docs/benchmarks.md, fleet section). Each grant for a replica holds a [`Seat`] there until
//! the request is sent, so that two releases never count the same free seat.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `queue.max` requests are already waiting.
    Full,
    /// Waited `queue.timeout` without a replica coming free.
    Deadline,
}

/// A granted wait: how long it took, and the replica whose room it was granted (`None`: any).
#[derive(Debug, PartialEq)]
pub struct Granted {
    pub waited: Duration,
    pub replica: Option<usize>,
    /// The seat held for it on `replica` until it is sent there (or gives up).
    pub seat: Seat,
}

/// A seat on a replica granted to a waiter and not yet taken: counted in the replica's
/// reservations until dropped, so that two releases never grant the same free seat. Dropped
/// unread with the grant when the waiter's client left just as it was granted.
#[derive(Debug, Default)]
pub struct Seat(Option<Arc<AtomicUsize>>);

impl Seat {
    fn hold(reserved: Option<&Arc<AtomicUsize>>) -> Seat {
        Seat(reserved.map(|r| {
            r.fetch_add(1, Ordering::AcqRel);
            r.clone()
        }))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let _ = r.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        }
    }
}

impl PartialEq for Seat {
    fn eq(&self, other: &Seat) -> bool {
        self.0.is_some() == other.0.is_some()
    }
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "queue_full",
            Refusal::Deadline => "deadline",
        }
    }
}

pub struct AdmissionQueue {
    pub max: usize,
    pub timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By priority, highest first (the key is the negated priority).
    levels: BTreeMap<i64, Level>,
    len: usize,
    next_id: u64,
    /// When the last waiter left the queue (granted, refused or gone).
    last_left: Option<Instant>,
}

/// One priority: keys in turn order, and each key's waiters in arrival order.
#[derive(Default)]
struct Level {
    turn: VecDeque<Arc<str>>,
    waiters: HashMap<Arc<str>, VecDeque<Waiter>>,
}

struct Waiter {
    id: u64,
    /// The replica holding most of the waiter's prompt, if one clearly does.
    affine: Option<usize>,
    tx: oneshot::Sender<(Option<usize>, Seat)>,
}

/// Removes its waiter when dropped (granted, timed out, or the client left).
struct Place<'a> {
    queue: &'a AdmissionQueue,
    level: i64,
    key: Arc<str>,
    id: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut inner = self.queue.lock();
        let Inner { levels, len, last_left, .. } = &mut *inner;
        *last_left = Some(Instant::now());
        if let Some(level) = levels.get_mut(&self.level) {
            if let Some(list) = level.waiters.get_mut(&self.key) {
                if let Some(at) = list.iter().position(|w| w.id == self.id) {
                    list.remove(at);
                    *len -= 1;
                }
            }
            level.tidy(&self.key);
            if level.turn.is_empty() {
                levels.remove(&self.level);
            }
        }
    }
}

impl Level {
    /// Forgets `key` once it has no waiter left.
    fn tidy(&mut self, key: &Arc<str>) {
        if self.waiters.get(key).is_some_and(VecDeque::is_empty) {
            self.waiters.remove(key);
            self.turn.retain(|k| k != key);
        }
    }

    /// The waiter to go for room on `replica` (module doc): (turn position, place in its key's list).
    fn pick(&self, replica: Option<usize>) -> Option<(usize, usize)> {
        if self.turn.is_empty() {
            return None;
        }
        let Some(r) = replica else { return Some((0, 0)) };
        let find = |want: Option<usize>| {
            self.turn.iter().enumerate().find_map(|(t, k)| {
                let at = self.waiters.get(k)?.iter().position(|w| w.affine == want)?;
                Some((t, at))
            })
        };
        find(Some(r)).or_else(|| find(None)).or(Some((0, 0)))
    }

    /// Takes the waiter at (turn position, place); its key goes to the back of the turn.
    fn take(&mut self, (t, at): (usize, usize)) -> Option<Waiter> {
        let key = self.turn.remove(t)?;
        let list = self.waiters.get_mut(&key)?;
        let w = list.remove(at);
        if list.is_empty() {
            self.waiters.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        w
    }
}

impl AdmissionQueue {
    pub fn new(max: usize, timeout: Duration) -> Self {
        AdmissionQueue { max, timeout, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether anyone waited here within `window`: someone waits now, or the last waiter left
    /// less than `window` ago.
    pub fn held_within(&self, window: Duration) -> bool {
        let inner = self.lock();
        inner.len > 0 || inner.last_left.is_some_and(|t| t.elapsed() < window)
    }

    /// Waits for a grant. `affine`: the replica holding most of the request's prompt, if any.
    /// Dropping the future leaves the queue.
    pub async fn wait(&self, key: Arc<str>, priority: i64, affine: Option<usize>) -> Result<Granted, Refusal> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let place = {
            let mut inner = self.lock();
            if inner.len >= self.max {
                return Err(Refusal::Full);
            }
            inner.next_id += 1;
            let id = inner.next_id;
            inner.len += 1;
            let level = inner.levels.entry(-priority).or_default();
            let list = level.waiters.entry(key.clone()).or_default();
            if list.is_empty() {
                level.turn.push_back(key.clone());
            }
            list.push_back(Waiter { id, affine, tx });
            Place { queue: self, level: -priority, key, id }
        };
        let granted = tokio::time::timeout(self.timeout, rx).await;
        drop(place);
        match granted {
            Ok(Ok((replica, seat))) => Ok(Granted { waited: started.elapsed(), replica, seat }),
            // The sender is only dropped once granted or removed, not while this waits.
            Ok(Err(_)) => Ok(Granted { waited: started.elapsed(), replica: None, seat: Seat::default() }),
            Err(_) => Err(Refusal::Deadline),
        }
    }

    /// Lets up to `n` waiters go, highest priority first, keys in turn; returns how many went.
    pub fn grant(&self, n: usize) -> usize {
        self.grant_for(None, n)
    }

    /// Lets up to `n` waiters go into room on `replica` (`None`: anywhere), preferring those
    /// affine to it (module doc); returns how many went.
    pub fn grant_for(&self, replica: Option<usize>, n: usize) -> usize {
        self.grant_into(replica, n, None)
    }

    /// [`AdmissionQueue::grant_for`], each grant holding a [`Seat`] counted in `reserved`
    /// until the waiter is sent.
    pub fn grant_into(&self, replica: Option<usize>, n: usize, reserved: Option<&Arc<AtomicUsize>>) -> usize {
        let mut inner = self.lock();
        let Inner { levels, len, .. } = &mut *inner;
        let mut granted = 0;
        while granted < n {
            let Some(mut entry) = levels.first_entry() else { break };
            let level = entry.get_mut();
            let next = level.pick(replica).and_then(|at| level.take(at));
            let emptied = level.turn.is_empty();
            if emptied {
                entry.remove();
            }
            let Some(w) = next else {
                if emptied {
                    continue;
                }
                break;
            };
            *len -= 1;
            // A waiter whose client just left does not use up the grant.
            if w.tx.send((replica, Seat::hold(reserved))).is_ok() {
                granted += 1;
            }
        }
        granted
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Spawns waiters (key, priority) in order, each recording its grant order.
    async fn run(q: &Arc<AdmissionQueue>, who: &[(&str, i64)]) -> Vec<tokio::task::JoinHandle<(String, usize)>> {
        let order = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for &(k, p) in who {
            let (queue, order, k) = (q.clone(), order.clone(), k.to_string());
            handles.push(tokio::spawn(async move {
                queue.wait(k.as_str().into(), p, None).await.unwrap();
                (k, order.fetch_add(1, Ordering::SeqCst))
            }));
            // Let it enqueue before the next one arrives.
            while q.len() < handles.len() {
                tokio::task::yield_now().await;
            }
        }
        handles
    }

    #[tokio::test]
    async fn keys_take_turns_and_priority_goes_first() {
        let q = Arc::new(AdmissionQueue::new(100, Duration::from_secs(30)));
        let h = run(&q, &[("busy", 0), ("busy", 0), ("busy", 0), ("lone", 0), ("vip", 5)]).await;
        let mut got = Vec::new();
        for _ in 0..5 {
            assert_eq!(q.grant(1), 1);
        }
        for j in h {
            got.push(j.await.unwrap());
        }
        got.sort_by_key(|(_, n)| *n);
        let names: Vec<_> = got.into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["vip", "busy", "lone", "busy", "busy"]);
        assert!(q.is_empty());
    }

    /// A queue with four waiters, one per key, queued in this order with these affinities; the
    /// replica each is granted.
    async fn four_waiters(
        waiters: [(&'static str, Option<usize>); 4],
    ) -> (Arc<AdmissionQueue>, [tokio::task::JoinHandle<Option<usize>>; 4]) {
        let q = Arc::new(AdmissionQueue::new(100, Duration::from_secs(30)));
        let mut waiting = Vec::new();
        for (k, affine) in waiters {
            let queue = q.clone();
            waiting.push(tokio::spawn(async move { queue.wait(k.into(), 0, affine).await.unwrap().replica }));
            while q.len() < waiting.len() {
                tokio::task::yield_now().await;
            }
        }
        let Ok(handles) = <[_; 4]>::try_from(waiting) else { unreachable!("four waiters were spawned") };
        (q, handles)
    }

    #[tokio::test]
    async fn room_on_a_replica_goes_to_a_waiter_affine_to_it() {
        let (q, [a, b, c, d]) = four_waiters([("a", Some(1)), ("b", Some(2)), ("c", None), ("d", Some(2))]).await;
        assert_eq!(q.grant_for(Some(2), 1), 1);
        assert_eq!(b.await.unwrap(), Some(2), "b, affine to 2, goes before a");
        assert_eq!(q.grant_for(Some(0), 1), 1);
        assert_eq!(c.await.unwrap(), Some(0), "none is affine to 0: c, affine to none, goes first");
        assert_eq!(q.grant_for(Some(0), 1), 1);
        assert_eq!(a.await.unwrap(), Some(0), "then the next in turn, rather than leave the room unused");
        assert_eq!(q.grant(1), 1);
        assert_eq!(d.await.unwrap(), None);
    }

    /// A waiter affine to a busy replica is passed over by room elsewhere that others fit, but
    /// goes first (in turn) when its own replica has room, and takes room nobody else fits.
    #[tokio::test]
    async fn a_waiter_affine_to_a_busy_replica_is_not_starved() {
        let (q, [x, y, z, w]) = four_waiters([("x", Some(0)), ("y", Some(1)), ("z", Some(0)), ("w", Some(1))]).await;
        assert_eq!(q.grant_for(Some(1), 1), 1);
        assert_eq!(y.await.unwrap(), Some(1), "room on 1 goes to y, affine to it, though x came first");
        assert_eq!(q.grant_for(Some(0), 1), 1);
        assert_eq!(x.await.unwrap(), Some(0), "x is first in turn among those affine to 0");
        assert_eq!(q.grant_for(Some(1), 1), 1);
        assert_eq!(w.await.unwrap(), Some(1));
        assert_eq!(q.grant_for(Some(2), 1), 1);
        assert_eq!(z.await.unwrap(), Some(2), "room nobody fits is not left unused");
        assert!(q.is_empty());
    }

    /// A grant for a replica holds a seat there until the granted request drops it (sent, or
    /// gone); a waiter gone before its grant takes neither the room nor a seat.
    #[tokio::test]
    async fn a_grant_holds_a_seat_until_it_is_dropped() {
        let q = Arc::new(AdmissionQueue::new(10, Duration::from_secs(30)));
        let reserved = Arc::new(AtomicUsize::new(0));
        let h = run(&q, &[("a", 0)]).await;
        let queue = q.clone();
        let b = tokio::spawn(async move { queue.wait("b".into(), 0, None).await });
        while q.len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.grant_into(Some(3), 1, Some(&reserved)), 1);
        for j in h {
            j.await.unwrap();
        }
        // a's task dropped its grant when it ended: the seat is free again.
        assert_eq!(reserved.load(Ordering::SeqCst), 0);
        assert_eq!(q.grant_into(Some(3), 1, Some(&reserved)), 1);
        let granted = b.await.unwrap().unwrap();
        assert_eq!((granted.replica, reserved.load(Ordering::SeqCst)), (Some(3), 1), "held while b is not sent");
        drop(granted);
        assert_eq!(reserved.load(Ordering::SeqCst), 0);
        // A waiter gone before its grant does not use the room, nor hold a seat.
        let c = {
            let queue = q.clone();
            tokio::spawn(async move { queue.wait("c".into(), 0, None).await })
        };
        while q.is_empty() {
            tokio::task::yield_now().await;
        }
        c.abort();
        assert!(c.await.is_err());
        assert_eq!(q.grant_into(Some(3), 1, Some(&reserved)), 0);
        assert_eq!(reserved.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn full_queue_refuses_and_deadline_expires() {
        let q = AdmissionQueue::new(1, Duration::from_millis(20));
        let first = q.wait("a".into(), 0, None);
        let second = async {
            tokio::task::yield_now().await;
            q.wait("b".into(), 0, None).await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first, Err(Refusal::Deadline));
        assert_eq!(second, Err(Refusal::Full));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_at_once() {
        let q = Arc::new(AdmissionQueue::new(10, Duration::from_secs(30)));
        let mut h = run(&q, &[("a", 0), ("b", 0)]).await;
        let a = h.remove(0);
        a.abort();
        assert!(a.await.is_err(), "cancelled");
        assert_eq!(q.len(), 1);
        assert_eq!(q.grant(5), 1, "only b is left to grant");
    }

    /// The queue remembers that it held someone: while a waiter is there, and for the window
    /// after the last one left.
    #[tokio::test]
    async fn it_tells_whether_anyone_waited_within_a_window() {
        let q = Arc::new(AdmissionQueue::new(10, Duration::from_secs(30)));
        assert!(!q.held_within(Duration::from_secs(3600)), "nobody ever waited");
        let h = run(&q, &[("a", 0)]).await;
        assert!(q.held_within(Duration::ZERO), "someone waits now");
        assert_eq!(q.grant(1), 1);
        for j in h {
            j.await.unwrap();
        }
        assert!(q.is_empty());
        assert!(q.held_within(Duration::from_secs(3600)), "the last waiter left just now");
        assert!(!q.held_within(Duration::ZERO), "but not within no time at all");
    }
}
