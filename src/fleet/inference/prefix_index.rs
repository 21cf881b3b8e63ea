//! The gateway's own, approximate index of which prompt blocks it has sent to which replica:
//! chained hashes of fixed-size blocks of the request's messages (a block matches only when
//! its whole prefix matches, as in vLLM's prefix cache), each with the set of replicas it went
//! to, bounded in memory by LRU eviction. The chain starts from the model's name, so two
//! models never share blocks.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;

/// Bytes of request text per block (about 16 tokens at 4 bytes a token).
pub const BLOCK_BYTES: usize = 64;
/// Replicas an index can tell apart (a bit each); further ones never get affinity.
pub const MAX_REPLICAS: usize = 64;

/// The chained block hashes of `text` for `model` (full blocks only).
pub fn block_hashes(model: &str, text: &[u8]) -> Vec<u64> {
    let mut seed = DefaultHasher::new();
    seed.write(model.as_bytes());
    let mut prev = seed.finish();
    text.chunks_exact(BLOCK_BYTES)
        .map(|block| {
            let mut h = DefaultHasher::new();
            h.write_u64(prev);
            h.write(block);
            prev = h.finish();
            prev
        })
        .collect()
}

/// Block hash → (replicas it was sent to, last use), with an age order for eviction.
pub struct PrefixIndex {
    capacity: usize,
    blocks: HashMap<u64, (u64, u64)>,
    by_age: BTreeMap<u64, u64>,
    now: u64,
}

impl PrefixIndex {
    /// `capacity`: blocks remembered (each costs about 60 bytes).
    pub fn new(capacity: usize) -> Self {
        PrefixIndex { capacity: capacity.max(1), blocks: HashMap::new(), by_age: BTreeMap::new(), now: 0 }
    }

    /// For each of `replicas` replicas, how many leading blocks of `hashes` it was sent.
    pub fn matches(&self, hashes: &[u64], replicas: usize) -> Vec<usize> {
        let mut out = vec![0; replicas];
        let mut alive = u64::MAX;
        for (depth, h) in hashes.iter().enumerate() {
            let Some(&(set, _)) = self.blocks.get(h) else { break };
            alive &= set;
            if alive == 0 {
                break;
            }
            for (i, n) in out.iter_mut().enumerate().take(MAX_REPLICAS) {
                if alive & (1 << i) != 0 {
                    *n = depth + 1;
                }
            }
        }
        out
    }

    /// Records that `hashes` went to `replica`, evicting the least recently used blocks.
    pub fn insert(&mut self, hashes: &[u64], replica: usize) {
        let bit = if replica < MAX_REPLICAS { 1u64 << replica } else { 0 };
        for &h in hashes {
            self.now += 1;
            let now = self.now;
            match self.blocks.get_mut(&h) {
                Some((set, age)) => {
                    *set |= bit;
                    self.by_age.remove(age);
                    *age = now;
                }
                None => {
                    if self.blocks.len() >= self.capacity {
                        if let Some((_, old)) = self.by_age.pop_first() {
                            self.blocks.remove(&old);
                        }
                    }
                    self.blocks.insert(h, (bit, now));
                }
            }
            self.by_age.insert(now, h);
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(parts: &[(u8, usize)]) -> Vec<u8> {
        parts.iter().flat_map(|&(c, blocks)| std::iter::repeat_n(c, blocks * BLOCK_BYTES)).collect()
    }

    #[test]
    fn counts_the_common_prefix_per_replica() {
        let mut idx = PrefixIndex::new(100);
        let a = block_hashes("m", &text(&[(b'a', 3)]));
        let ab = block_hashes("m", &text(&[(b'a', 2), (b'b', 2)]));
        idx.insert(&a, 1);
        idx.insert(&ab, 2);
        assert_eq!(idx.matches(&a, 3), vec![0, 3, 2]);
        assert_eq!(idx.matches(&ab, 3), vec![0, 2, 4]);
    }

    #[test]
    fn models_never_share_blocks() {
        let mut idx = PrefixIndex::new(100);
        let t = text(&[(b'a', 2)]);
        idx.insert(&block_hashes("m1", &t), 0);
        assert_eq!(idx.matches(&block_hashes("m2", &t), 1), vec![0]);
        assert_eq!(idx.matches(&block_hashes("m1", &t), 1), vec![2]);
    }

    #[test]
    fn memory_is_bounded_and_old_blocks_go_first() {
        let mut idx = PrefixIndex::new(4);
        let old = block_hashes("m", &text(&[(b'o', 2)]));
        idx.insert(&old, 0);
        for c in b'a'..=b'z' {
            idx.insert(&block_hashes("m", &text(&[(c, 1)])), 0);
        }
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.matches(&old, 1), vec![0]);
        // A partial trailing block is never indexed.
        assert!(block_hashes("m", &[b'x'; BLOCK_BYTES - 1]).is_empty());
    }
}
