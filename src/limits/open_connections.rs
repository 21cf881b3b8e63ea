//! Open client connections per address (`limits.per_ip.connections`). A [`ConnSlot`] is one
//! open connection: taken when the connection is accepted, given back on drop however the
//! connection ends. An address has an entry only while it holds a connection, so the table
//! is bounded by the number of open connections, not by the number of addresses ever seen.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<IpAddr, usize>>;

#[derive(Debug)]
pub struct ConnTable {
    shards: Vec<Shard>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: Default::default() }
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    match shard.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ConnTable {
    fn shard(&self, ip: &IpAddr) -> &Shard {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// Connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        lock(self.shard(&ip)).get(&ip).copied().unwrap_or(0)
    }

    /// One more connection for `ip`, or `None` when it already holds `cap`.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ConnSlot> {
        let mut map = lock(self.shard(&ip));
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(ConnSlot { table: self.clone(), ip })
    }

    fn close(&self, ip: IpAddr) {
        let mut map = lock(self.shard(&ip));
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Addresses holding at least one connection.
    pub fn addresses(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// One open connection of one address.
#[derive(Debug)]
pub struct ConnSlot {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.table.close(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_gives_back_on_drop() {
        let t = Arc::new(ConnTable::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| t.try_open(a, 3).unwrap()).collect();
        assert!(t.try_open(a, 3).is_none(), "a fourth connection passed a cap of 3");
        // Another address is not charged for a's connections.
        let other = t.try_open(b, 3).unwrap();
        assert_eq!((t.open(a), t.open(b)), (3, 1));
        drop(held);
        drop(other);
        assert_eq!((t.open(a), t.addresses()), (0, 0), "entries outlived their connections");
        assert!(t.try_open(a, 3).is_some());
        // A refusal leaves no entry behind.
        assert!(t.try_open(b, 0).is_none());
        assert_eq!(t.addresses(), 0);
    }
}
