//! Limits shared by every gateway instance pointing at the same Redis (`limits.store`).
//!
//! rpm and tpm are counted per window by server-side scripts ([`scripts`]) and reserved in
//! batches, so most requests are decided from this instance's grant without a round trip
//! ([`budget`] states the accuracy). Concurrency is exact: each slot is a lease in Redis,
//! taken with one round trip (at most `limits.store_timeout`), renewed while the request
//! lives and dropped when it ends; a crashed instance's leases expire after [`LEASE`].
//!
//! The client, its reconnections and every background exchange run on a runtime of their
//! own (one thread), apart from Pingora's per-thread runtimes; a request awaits only its own
//! call, under `limits.store_timeout`. While the store is down nothing waits for it:
//! `limits.on_store_error` decides (count locally, or refuse with 503), and a probe brings
//! shared counting back when Redis answers again.

pub mod budget;
mod conn;
mod leases;
mod per_ip;
mod scripts;
pub mod settings;

pub use per_ip::IpVerdict;
pub use settings::{OnStoreError, StoreSettings, StoreUrl};

use super::{KeyLimits, KeyState, LimitKind, Refusal, Slot, Snapshot};
use arc_swap::ArcSwapOption;
use budget::{Reply, SharedWindow, Take};
use conn::{Conn, Health, StoreError};
use leases::{Lease, Leases};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a concurrency slot outlives an instance that stopped renewing it.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often held leases are renewed, idle grants given back, and a down store probed.
const TICK: Duration = Duration::from_millis(250);
/// A grant unspent this long (ms) while its window lasts is given back.
const IDLE_GRANT_MS: u64 = 1000;

/// Why a request is not admitted.
#[derive(Debug)]
pub enum Denied {
    Limit(Refusal),
    /// `on_store_error: closed` and the store did not answer.
    StoreDown,
}

/// What an admitted request holds until it ends.
#[derive(Debug, Default)]
pub struct Held {
    pub slot: Option<Slot>,
    pub lease: Option<Lease>,
    /// Where this request's tokens are charged and its headers read.
    pub window: Option<Arc<SharedWindow>>,
}

/// One configured key's shared state (by key name: it survives reloads).
#[derive(Debug)]
struct SharedKey {
    slots_key: Arc<str>,
    window: Arc<SharedWindow>,
}

pub struct SharedLimits {
    settings: StoreSettings,
    conn: ArcSwapOption<Conn>,
    health: Health,
    keys: Mutex<HashMap<Arc<str>, Arc<SharedKey>>>,
    /// `limits.per_ip.rpm` windows by client address (bounded: see per_ip.rs).
    ips: per_ip::IpWindows,
    leases: Arc<Leases>,
    /// The store's own runtime (see the module comment).
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Starts the store's thread and connects in the background; `None` for `local`.
    pub fn start(settings: &StoreSettings) -> std::io::Result<Option<Arc<SharedLimits>>> {
        let Some(url) = &settings.url else { return Ok(None) };
        if let Some(p) = url.password() {
            crate::observe::redact::remember(&p);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (leases, releases) = Leases::new();
        let store = Arc::new(SharedLimits {
            settings: settings.clone(),
            conn: ArcSwapOption::empty(),
            health: Health::default(),
            keys: Mutex::new(HashMap::new()),
            ips: Default::default(),
            leases,
            handle,
        });
        let bg = store.clone();
        std::thread::Builder::new().name("limits-store".into()).spawn(move || {
            rt.block_on(async move {
                bg.connect().await;
                tokio::spawn(bg.leases.clone().release_loop(bg.clone(), releases));
                bg.maintain().await
            })
        })?;
        log::info!("limits shared through {:?} (cluster: {})", url, settings.cluster);
        Ok(Some(store))
    }

    /// Until the first connection: cluster clients must reach a node before they exist.
    async fn connect(&self) {
        loop {
            match Conn::open(&self.settings).await {
                Ok(c) => {
                    self.conn.store(Some(Arc::new(c)));
                    return;
                }
                Err(e) => self.health.failed(&StoreError::Redis(e), self.settings.on_error.name()),
            }
            tokio::time::sleep(TICK * 2).await;
        }
    }

    /// The background loop: renew leases, give back idle grants, probe a down store.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            if self.health.is_down() {
                let ping = redis::cmd("PING");
                if self.call(|c| async move { c.query::<String>(&ping).await }).await.is_ok() {
                    self.health.ok();
                }
                continue;
            }
            // Renew every second tick: a lease is renewed ten times within its life.
            if n.is_multiple_of(2) {
                self.leases.renew(&self).await;
            }
            // Addresses can be many (per_ip.max_tracked): their sweep runs once a second.
            self.give_back_idle(n.is_multiple_of(4)).await;
        }
    }

    async fn give_back_idle(&self, with_ips: bool) {
        let now = crate::clock::now_ms();
        let mut windows: Vec<Arc<SharedWindow>> = self.lock_keys().values().map(|k| k.window.clone()).collect();
        if with_ips {
            windows.extend(self.ip_windows());
        }
        for w in windows {
            if let Some((start, n)) = w.idle_grant(now, IDLE_GRANT_MS) {
                let args = [start.to_string(), n.to_string()];
                let _ = self.call(|c| async move { c.script::<i64>(&scripts::RETURN, w.key(), &args).await }).await;
            }
        }
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<SharedKey>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, name: &Arc<str>) -> Arc<SharedKey> {
        let mut keys = self.lock_keys();
        keys.entry(name.clone())
            .or_insert_with(|| {
                // One hash tag per key: both of its keys sit in one cluster slot.
                let tag = format!("mcas:{{k:{name}}}");
                Arc::new(SharedKey {
                    slots_key: format!("{tag}:c").into(),
                    window: Arc::new(SharedWindow::new(format!("{tag}:w"))),
                })
            })
            .clone()
    }

    /// One call to the store, bounded by `limits.store_timeout`; a failure marks it down.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn.load_full() else { return Err(StoreError::NotConnected) };
        let r = match tokio::time::timeout(self.settings.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &r {
            Err(e) => self.health.failed(e, self.settings.on_error.name()),
            // Any answer ends an outage, not only the background probe's: what is served and
            // what `limit_store_up` and the log say agree.
            Ok(_) if self.health.is_down() => self.health.ok(),
            Ok(_) => {}
        }
        r
    }

    /// Exchanges with the key's window: sends pending tokens, asks for a batch of requests.
    async fn sync(&self, w: &SharedWindow, l: &KeyLimits, spend_one: bool) -> Result<bool, StoreError> {
        let want = l.rpm.map(budget::batch).unwrap_or(0);
        let tokens = w.take_pending();
        let sent = crate::clock::now_ms();
        let args =
            [l.window.as_millis().to_string(), want.to_string(), l.rpm.unwrap_or(0).to_string(), tokens.to_string()];
        let key = w.key();
        match self.call(|c| async move { c.script::<Vec<i64>>(&scripts::RESERVE, key, &args).await }).await {
            Ok(v) => {
                let Some(reply) = Reply::from_values(&v) else {
                    return Err(StoreError::Redis((redis::ErrorKind::Parse, "unexpected RESERVE reply").into()));
                };
                Ok(w.apply(l, &reply, sent, spend_one))
            }
            Err(e) => {
                w.restore_pending(tokens);
                Err(e)
            }
        }
    }

    /// A background exchange (prefetch or token flush) on the store's runtime.
    fn sync_later(self: &Arc<Self>, w: Arc<SharedWindow>, l: KeyLimits) {
        let store = self.clone();
        self.handle.spawn(async move {
            let _ = store.sync(&w, &l, false).await;
            w.sync_done();
        });
    }

    /// rpm and tpm against a shared window: the fast path, or one exchange when this
    /// instance holds no grant. `Ok(Err(_))`: refused; `Err(_)`: the store did not answer.
    async fn count(self: &Arc<Self>, w: &Arc<SharedWindow>, l: &KeyLimits) -> Result<Result<(), Refusal>, StoreError> {
        let now = crate::clock::now_ms();
        match w.take(l, now) {
            Take::Admitted { sync } => {
                if sync {
                    self.sync_later(w.clone(), *l);
                }
                Ok(Ok(()))
            }
            Take::Refused(r) => Ok(Err(r)),
            Take::NeedSync => {
                if !self.sync(w, l, true).await? {
                    return Ok(Err(w.refusal(LimitKind::Requests, now)));
                }
                if let Some(r) = w.tokens_refusal(l, now) {
                    w.untake(l);
                    return Ok(Err(r));
                }
                Ok(Ok(()))
            }
        }
    }

    /// Admits a request of key `name` against the shared counters; `local` is the key's
    /// own state, used while the store is down and `on_store_error` is `local`.
    pub async fn admit(
        self: &Arc<Self>,
        name: &Arc<str>,
        l: &KeyLimits,
        local: &Arc<KeyState>,
    ) -> Result<Held, Denied> {
        if self.health.is_down() {
            return self.fallback(l, local);
        }
        let k = self.key(name);
        let counted = l.rpm.is_some() || l.tpm.is_some();
        if counted {
            match self.count(&k.window, l).await {
                Ok(Ok(())) => {}
                Ok(Err(r)) => return Err(Denied::Limit(r)),
                Err(_) => return self.fallback(l, local),
            }
        }
        let lease = match l.concurrency {
            Some(max) => match self.acquire(&k, max).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => {
                    k.window.untake(l);
                    let r = Refusal { kind: LimitKind::Concurrency, retry_after: Duration::from_secs(1) };
                    return Err(Denied::Limit(r));
                }
                Err(_) => return self.fallback(l, local),
            },
            None => None,
        };
        Ok(Held { slot: None, lease, window: counted.then_some(k.window.clone()) })
    }

    async fn acquire(self: &Arc<Self>, k: &SharedKey, max: u64) -> Result<Option<Lease>, StoreError> {
        let id = self.leases.next_id();
        let args = [max.to_string(), LEASE.as_millis().to_string(), id.clone()];
        let key = &*k.slots_key;
        match self.call(|c| async move { c.script::<Vec<i64>>(&scripts::ACQUIRE, key, &args).await }).await {
            Ok(v) if v.first() == Some(&1) => Ok(Some(self.leases.hold(k.slots_key.clone(), id))),
            Ok(_) => Ok(None),
            Err(e) => {
                // It may have been taken after all: drop it rather than wait for its expiry.
                self.leases.release(k.slots_key.clone(), id);
                Err(e)
            }
        }
    }

    fn fallback(&self, l: &KeyLimits, local: &Arc<KeyState>) -> Result<Held, Denied> {
        match self.settings.on_error {
            OnStoreError::Closed => Err(Denied::StoreDown),
            OnStoreError::Local => match local.admit(l, crate::clock::now_ms()) {
                Ok((slot, _)) => Ok(Held { slot, lease: None, window: None }),
                Err(r) => Err(Denied::Limit(r)),
            },
        }
    }

    /// Charges a response's tokens to the shared window; sends them when enough are pending.
    pub fn charge(self: &Arc<Self>, name: &Arc<str>, l: &KeyLimits, tokens: u64) {
        let k = self.key(name);
        if k.window.charge(l, tokens) && k.window.claim_sync() {
            self.sync_later(k.window.clone(), *l);
        }
    }

    /// The shared counts for the `x-ratelimit-*` headers.
    pub fn snapshot(&self, w: &SharedWindow, l: &KeyLimits) -> Snapshot {
        w.snapshot(l, crate::clock::now_ms())
    }
}
