//! The admission queue of a provider with `balance: inference`: requests wait here, not in
//! vLLM's queue, while every replica is saturated. Bounded (`queue.max`), with a deadline
//! (`queue.timeout`); the highest `keys[].priority` goes first, and within a priority keys
//! take turns (a key with many waiting requests does not starve one with a single request).
//! A waiter whose future is dropped (its client left) leaves the queue at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
}

/// One priority: keys in turn order, and each key's waiters in arrival order.
#[derive(Default)]
struct Level {
    turn: VecDeque<Arc<str>>,
    waiters: HashMap<Arc<str>, VecDeque<(u64, oneshot::Sender<()>)>>,
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
        let Inner { levels, len, .. } = &mut *inner;
        if let Some(level) = levels.get_mut(&self.level) {
            if let Some(list) = level.waiters.get_mut(&self.key) {
                if let Some(at) = list.iter().position(|(id, _)| *id == self.id) {
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

    /// Waits for a grant; `Ok` with the time waited. Dropping the future leaves the queue.
    pub async fn wait(&self, key: Arc<str>, priority: i64) -> Result<Duration, Refusal> {
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
            list.push_back((id, tx));
            Place { queue: self, level: -priority, key, id }
        };
        let granted = tokio::time::timeout(self.timeout, rx).await;
        drop(place);
        match granted {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => Err(Refusal::Deadline),
        }
    }

    /// Lets up to `n` waiters go, highest priority first, keys in turn; returns how many went.
    pub fn grant(&self, n: usize) -> usize {
        let mut inner = self.lock();
        let Inner { levels, len, .. } = &mut *inner;
        let mut granted = 0;
        while granted < n {
            let Some(mut entry) = levels.first_entry() else { break };
            let level = entry.get_mut();
            let Some(key) = level.turn.pop_front() else {
                entry.remove();
                continue;
            };
            let next = level.waiters.get_mut(&key).and_then(VecDeque::pop_front);
            if level.waiters.get(&key).is_some_and(|l| !l.is_empty()) {
                level.turn.push_back(key.clone());
            } else {
                level.waiters.remove(&key);
            }
            if level.turn.is_empty() {
                entry.remove();
            }
            if let Some((_, tx)) = next {
                *len -= 1;
                // A waiter whose client just left does not use up the grant.
                if tx.send(()).is_ok() {
                    granted += 1;
                }
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
                queue.wait(k.as_str().into(), p).await.unwrap();
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

    #[tokio::test]
    async fn full_queue_refuses_and_deadline_expires() {
        let q = AdmissionQueue::new(1, Duration::from_millis(20));
        let first = q.wait("a".into(), 0);
        let second = async {
            tokio::task::yield_now().await;
            q.wait("b".into(), 0).await
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
}
