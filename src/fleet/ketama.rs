//! The consistent-hash ring of a provider: `pingora-ketama`'s continuum (the one behind
//! Pingora's `KetamaHashing`), built from each backend's address and weight only, so every
//! gateway instance with the same config builds the same ring and picks the same backend.

use pingora_ketama::{Bucket, Continuum};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Ring steps walked before giving up on finding a backend that fits (docs/pingora.md,
/// "Consistent hashing": repeats count as steps, so this must be well above the number of
/// backends).
pub const MAX_STEPS: usize = 256;

pub struct Ring {
    continuum: Continuum,
    /// The backend index of each point of the continuum, in ring order: worked out once here
    /// (through the address → index map) so a walk neither hashes addresses nor looks them up.
    points: Box<[u32]>,
    backends: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("backends", &self.backends).finish()
    }
}

impl Ring {
    /// `backends`: (address, weight) in config order; the walk yields indices into it.
    pub fn new(backends: &[(SocketAddr, usize)]) -> Self {
        let buckets: Vec<Bucket> =
            backends.iter().map(|(a, w)| Bucket::new(*a, u32::try_from(*w).unwrap_or(u32::MAX).max(1))).collect();
        // The last of equal addresses owns them, as a map built in config order decides.
        let index: HashMap<SocketAddr, usize> = backends.iter().enumerate().map(|(i, (a, _))| (*a, i)).collect();
        let continuum = Continuum::new(&buckets);
        let mut points = Vec::new();
        if !backends.is_empty() {
            // `get_addr` steps through the points in order and wraps to 0 after the last one.
            let mut idx = 0;
            while let Some(addr) = continuum.get_addr(&mut idx) {
                // Every point is one of `backends` (so in `index`); u32::MAX would end a walk.
                points.push(index.get(addr).and_then(|&i| u32::try_from(i).ok()).unwrap_or(u32::MAX));
                if idx == 0 {
                    break;
                }
            }
        }
        Ring { continuum, points: points.into_boxed_slice(), backends: index.len() }
    }

    /// Backend indices in ring order from the key's point, at most [`MAX_STEPS`] steps
    /// (with repeats).
    pub fn walk<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = usize> + 'a {
        let len = self.points.len();
        let start = if len == 0 { 0 } else { self.continuum.node_idx(key) };
        (0..if len == 0 { 0 } else { MAX_STEPS }).map_while(move |k| {
            let i = *self.points.get((start + k) % len)?;
            (i != u32::MAX).then_some(i as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<(SocketAddr, usize)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)), 1)).collect()
    }

    fn owners(ring: &Ring, list: &[(SocketAddr, usize)], keys: usize) -> Vec<SocketAddr> {
        (0..keys).map(|k| list[ring.walk(format!("key-{k}").as_bytes()).next().unwrap()].0).collect()
    }

    #[test]
    fn same_config_same_ring() {
        let list = addrs(4);
        assert_eq!(owners(&Ring::new(&list), &list, 1000), owners(&Ring::new(&list), &list, 1000));
    }

    #[test]
    fn removing_one_of_five_moves_only_its_keys() {
        let five = addrs(5);
        let before = owners(&Ring::new(&five), &five, 10_000);
        let removed = five[2].0;
        let four: Vec<_> = five.iter().copied().filter(|(a, _)| *a != removed).collect();
        let after = owners(&Ring::new(&four), &four, 10_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*b, removed, "a key of a remaining backend moved");
                moved += 1;
            }
        }
        let owned = before.iter().filter(|a| **a == removed).count();
        assert_eq!(moved, owned);
        assert!((1000..3000).contains(&owned), "{owned}");
    }

    #[test]
    fn adding_a_sixth_moves_about_a_sixth() {
        let five = addrs(5);
        let six = addrs(6);
        let before = owners(&Ring::new(&five), &five, 10_000);
        let after = owners(&Ring::new(&six), &six, 10_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, six[5].0, "a key moved between old backends");
                moved += 1;
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!((0.10..0.24).contains(&share), "moved {share}");
    }

    /// The walk as it was before the points were precomputed: through the continuum and an
    /// address map at every step.
    fn walk_by_address(list: &[(SocketAddr, usize)], key: &[u8]) -> Vec<usize> {
        let buckets: Vec<Bucket> = list.iter().map(|(a, w)| Bucket::new(*a, *w as u32)).collect();
        let c = Continuum::new(&buckets);
        let index: HashMap<SocketAddr, usize> = list.iter().enumerate().map(|(i, (a, _))| (*a, i)).collect();
        let mut idx = c.node_idx(key);
        (0..MAX_STEPS).map_while(|_| c.get_addr(&mut idx).and_then(|a| index.get(a).copied())).collect()
    }

    #[test]
    fn precomputed_points_walk_as_the_continuum_does() {
        let mut list = addrs(7);
        list[3].1 = 3;
        list[5].1 = 2;
        let ring = Ring::new(&list);
        for k in 0..2000 {
            let key = format!("key-{k}");
            assert_eq!(ring.walk(key.as_bytes()).collect::<Vec<_>>(), walk_by_address(&list, key.as_bytes()), "{key}");
        }
        for key in [&b""[..], b"\xff\xfe", &[0u8; 4096]] {
            assert_eq!(ring.walk(key).collect::<Vec<_>>(), walk_by_address(&list, key));
        }
        // One backend, and the same address twice (the later index owns it, as before).
        let one = addrs(1);
        assert_eq!(Ring::new(&one).walk(b"x").collect::<Vec<_>>(), walk_by_address(&one, b"x"));
        let twice = vec![one[0], one[0]];
        assert_eq!(Ring::new(&twice).walk(b"x").collect::<Vec<_>>(), walk_by_address(&twice, b"x"));
        assert!(Ring::new(&twice).walk(b"x").all(|i| i == 1));
    }

    #[test]
    fn walk_visits_every_backend() {
        let list = addrs(5);
        let ring = Ring::new(&list);
        let mut seen: Vec<usize> = ring.walk(b"x").collect();
        assert_eq!(seen.len(), MAX_STEPS);
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(Ring::new(&[]).walk(b"x").count(), 0);
    }
}
