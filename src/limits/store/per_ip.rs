//! `limits.per_ip.rpm` shared across instances: one window per client address in Redis
//! (`mcas:{ip:<address>}:w`, a minute like the local guard), reserved in batches like the
//! per-key windows. Failed-authentication cooling-off and `limits.per_ip.connections` stay
//! per instance: the first is decided from this instance's own failures, the second at
//! accept, before anything could wait for Redis.
//!
//! Memory is bounded by `limits.per_ip.max_tracked` addresses: when full, entries whose grant
//! has ended are dropped; an address that still finds no room is counted by the local guard.

use super::super::{KeyLimits, LimitKind, Refusal};
use super::budget::SharedWindow;
use super::{Denied, OnStoreError, SharedLimits};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IP_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct IpWindows(Mutex<HashMap<IpAddr, Arc<SharedWindow>>>);

impl IpWindows {
    fn get(&self, ip: IpAddr, max: usize, now: u64) -> Option<Arc<SharedWindow>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&ip) {
            return Some(w.clone());
        }
        if map.len() >= max {
            map.retain(|_, w| !w.expired(now));
            if map.len() >= max {
                return None;
            }
        }
        let w = Arc::new(SharedWindow::new(format!("mcas:{{ip:{ip}}}:w")));
        map.insert(ip, w.clone());
        Some(w)
    }
}

/// What the caller does next.
pub enum IpVerdict {
    Admitted,
    /// The shared count is not available: check this address with the local guard.
    Local,
}

impl SharedLimits {
    pub(super) fn ip_windows(&self) -> Vec<Arc<SharedWindow>> {
        self.ips.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The address's shared request rate (`rpm` per minute).
    pub async fn admit_ip(self: &Arc<Self>, ip: IpAddr, rpm: u64, max_tracked: usize) -> Result<IpVerdict, Denied> {
        let down = || match self.settings.on_error {
            OnStoreError::Local => Ok(IpVerdict::Local),
            OnStoreError::Closed => Err(Denied::StoreDown),
        };
        if self.health.is_down() {
            return down();
        }
        let Some(w) = self.ips.get(ip, max_tracked, crate::clock::now_ms()) else { return Ok(IpVerdict::Local) };
        let l = KeyLimits { rpm: Some(rpm), tpm: None, concurrency: None, window: IP_WINDOW };
        match self.count(&w, &l).await {
            Ok(Ok(())) => Ok(IpVerdict::Admitted),
            Ok(Err(r)) => Err(Denied::Limit(Refusal { kind: LimitKind::IpRequests, retry_after: r.retry_after })),
            Err(_) => down(),
        }
    }
}
