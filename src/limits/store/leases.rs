//! Concurrency slots held in Redis: which leases this instance holds (to renew them), and
//! their release when a request ends — queued from `Drop`, which may run on any thread,
//! and sent by the store's own runtime.

use super::{scripts, SharedLimits, LEASE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

type Release = (Arc<str>, String);

#[derive(Debug)]
pub struct Leases {
    /// This process's prefix of lease ids: unique across instances and restarts.
    instance: String,
    next: AtomicU64,
    /// Held leases: id → the sorted set it is in.
    held: Mutex<HashMap<String, Arc<str>>>,
    releases: mpsc::UnboundedSender<Release>,
}

/// A concurrency slot in Redis; released when dropped (however the request ended).
#[derive(Debug)]
pub struct Lease {
    leases: Arc<Leases>,
    set: Arc<str>,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.release(self.set.clone(), std::mem::take(&mut self.id));
    }
}

impl Leases {
    pub fn new() -> (Arc<Leases>, mpsc::UnboundedReceiver<Release>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let instance = format!("{:016x}.{}", rand::random::<u64>(), std::process::id());
        (Arc::new(Leases { instance, next: AtomicU64::new(0), held: Mutex::new(HashMap::new()), releases: tx }), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> String {
        format!("{}.{}", self.instance, self.next.fetch_add(1, Ordering::Relaxed))
    }

    pub fn hold(self: &Arc<Self>, set: Arc<str>, id: String) -> Lease {
        self.lock().insert(id.clone(), set.clone());
        Lease { leases: self.clone(), set, id }
    }

    pub fn release(&self, set: Arc<str>, id: String) {
        self.lock().remove(&id);
        // Only fails once the store's runtime is gone (the process is ending).
        let _ = self.releases.send((set, id));
    }

    /// Sends releases as they come: whatever queued meanwhile goes in one ZREM per set, so
    /// releases keep up with any request rate (a lost one expires with its lease).
    pub async fn release_loop(self: Arc<Self>, store: Arc<SharedLimits>, mut rx: mpsc::UnboundedReceiver<Release>) {
        while let Some(first) = rx.recv().await {
            let mut by_set: HashMap<Arc<str>, Vec<String>> = HashMap::new();
            by_set.entry(first.0).or_default().push(first.1);
            while let Ok((set, id)) = rx.try_recv() {
                by_set.entry(set).or_default().push(id);
                if by_set.len() > 1024 {
                    break;
                }
            }
            for (set, ids) in by_set {
                let cmd = redis::cmd("ZREM").arg(&*set).arg(&ids).clone();
                let _ = store.call(|c| async move { c.query::<i64>(&cmd).await }).await;
            }
        }
    }

    /// Extends every held lease, one script call per sorted set.
    pub async fn renew(&self, store: &SharedLimits) {
        let mut by_set: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (id, set) in self.lock().iter() {
            by_set.entry(set.clone()).or_default().push(id.clone());
        }
        for (set, ids) in by_set {
            let mut args = Vec::with_capacity(ids.len() + 1);
            args.push(LEASE.as_millis().to_string());
            args.extend(ids);
            let key = &*set;
            let _ = store.call(|c| async move { c.script::<i64>(&scripts::RENEW, key, &args).await }).await;
        }
    }
}
