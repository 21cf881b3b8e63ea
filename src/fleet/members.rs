//! A provider's backend set changing at run time (reload, DNS discovery): the one place that
//! decides which backend objects survive. A backend with the same address and weight as
//! before keeps its object, so its health, circuit and in-flight count; requests in flight
//! hold their backend (and the runtime they started with) until they end, so a removed
//! backend leaves only when its last request is done.

use super::discover::Member;
use super::ketama::Ring;
use super::{Backend, Provider};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Gives each backend in `backends` the object of the backend of `prev` with the same address,
/// weight and pool cap, when there is one (a changed pool cap makes a new backend object: the
/// old one's slots stay with the requests that hold them).
pub fn carry_state(prev: &Provider, backends: &mut [Arc<Backend>]) {
    let pool = |x: &Backend| x.pool.as_ref().map(|p| p.settings);
    for b in backends.iter_mut() {
        if let Some(same) =
            prev.backends.iter().find(|o| o.addr == b.addr && o.weight == b.weight && pool(o) == pool(b))
        {
            *b = same.clone();
        }
    }
}

impl Provider {
    /// This provider with `members` as its backends (fresh objects, each given the provider's
    /// pool cap, `providers[].pool`: see [`carry_state`]) and the ring built for them;
    /// everything else the same. Every field is named, so a field added to [`Provider`] must
    /// be decided on here (copied, or reset like the cursor).
    pub fn with_members(&self, members: &[Member]) -> Provider {
        let mut backends: Vec<Arc<Backend>> =
            members.iter().map(|&(addr, weight)| Arc::new(Backend::new(addr, weight))).collect();
        super::pool::attach(&self.name, &mut backends, self.fleet.pool, self.timeouts.idle);
        Provider {
            name: self.name.clone(),
            host_header: self.host_header.clone(),
            base_path: self.base_path.clone(),
            tls: self.tls.clone(),
            api_key: self.api_key.clone(),
            models: self.models.clone(),
            default_model: self.default_model.clone(),
            ring: Ring::new(members),
            backends,
            timeouts: self.timeouts.clone(),
            fleet: Default::default(),
            cursor: AtomicUsize::new(0),
            http: Default::default(),
            headers: self.headers.clone(),
            // Per-backend load signals and the admission queue are indexed by backend: started
            // afresh by `with_fleet`, as on a reload.
            inference: None,
            lora: None,
        }
        .with_fleet(self.fleet.clone())
    }

    /// `(address, weight)` of every backend, sorted.
    pub fn members(&self) -> Vec<Member> {
        let mut m: Vec<Member> = self.backends.iter().map(|b| (b.addr, b.weight)).collect();
        m.sort();
        m
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::ModelGlobs;
    use std::sync::atomic::Ordering;

    fn addr(i: u8) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, i], 8000))
    }

    #[test]
    fn kept_backends_keep_their_state_and_others_are_new() {
        let members = [(addr(1), 1), (addr(2), 1)];
        let p = Provider::new(
            "p",
            "h".into(),
            String::new(),
            None,
            None,
            ModelGlobs::default(),
            vec![],
            Default::default(),
        )
        .with_members(&members);
        p.backends[0].inflight.store(3, Ordering::Relaxed);
        let mut next = p.with_members(&[(addr(1), 1), (addr(2), 2), (addr(3), 1)]);
        carry_state(&p, &mut next.backends);
        assert!(Arc::ptr_eq(&next.backends[0], &p.backends[0]));
        assert_eq!(next.backends[0].inflight.load(Ordering::Relaxed), 3);
        // A new weight is a new backend (the ring position changes with it).
        assert!(!Arc::ptr_eq(&next.backends[1], &p.backends[1]));
        assert_eq!(next.members(), vec![(addr(1), 1), (addr(2), 2), (addr(3), 1)]);
        assert!(next.ring.walk(b"k").next().is_some());
    }
}
