//! A model of vLLM's automatic prefix caching, so prefix-aware routing can be benchmarked.
//!
//! The prompt text is cut into full blocks of `block_chars` bytes (a trailing partial block is
//! never cached, as in vLLM); block i's hash chains block i-1's, so a block only matches when
//! its whole prefix matches. A lookup counts the leading blocks already cached, then inserts
//! (or refreshes) all of them in an LRU set of `capacity` blocks.
//!
//! Token rule (shared with `prompt_tokens`): one token per [`CHARS_PER_TOKEN`] prompt bytes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::sync::Mutex;

/// Prompt bytes per token, for prompt and cached token counts.
pub const CHARS_PER_TOKEN: usize = 4;

/// Prompt tokens of a prompt text of `len` bytes: ceil(len / 4).
pub fn tokens_for_chars(len: usize) -> u64 {
    len.div_ceil(CHARS_PER_TOKEN) as u64
}

/// The LRU set of block hashes of one replica.
pub struct PrefixCache {
    capacity: usize,
    block_chars: usize,
    lru: Mutex<Lru>,
}

/// Hash → last use, and last use → hash, so the least recently used block is the first key
/// of `by_age`. Uses are a counter, not a clock.
#[derive(Default)]
struct Lru {
    age_of: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
    now: u64,
}

/// What one lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Full blocks in the prompt.
    pub blocks: usize,
    /// Leading blocks that were already cached.
    pub hit_blocks: usize,
}

impl PrefixCache {
    pub fn new(capacity: usize, block_chars: usize) -> Self {
        PrefixCache {
            capacity,
            block_chars: block_chars.max(1),
            lru: Mutex::new(Lru::default()),
        }
    }

    pub fn block_chars(&self) -> usize {
        self.block_chars
    }

    /// Looks the prompt up and inserts its blocks. Hashing happens outside the lock.
    pub fn lookup_and_insert(&self, prompt: &[u8]) -> Lookup {
        let blocks = prompt.len() / self.block_chars;
        if blocks == 0 || self.capacity == 0 {
            return Lookup {
                blocks,
                hit_blocks: 0,
            };
        }
        let mut hashes = Vec::with_capacity(blocks);
        let mut prev = 0u64;
        for block in prompt.chunks_exact(self.block_chars) {
            let mut h = DefaultHasher::new();
            h.write_u64(prev);
            h.write(block);
            prev = h.finish();
            hashes.push(prev);
        }
        // A poisoned lock only means another request panicked mid-update; the map is still a
        // valid cache, so keep serving from it.
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let hit_blocks = hashes
            .iter()
            .take_while(|h| lru.age_of.contains_key(h))
            .count();
        for &h in &hashes {
            lru.touch(h, self.capacity);
        }
        Lookup { blocks, hit_blocks }
    }

    /// Cached tokens for a lookup, by the shared token rule.
    pub fn hit_tokens(&self, found: Lookup) -> u64 {
        (found.hit_blocks * self.block_chars / CHARS_PER_TOKEN) as u64
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.lru
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .age_of
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lru {
    fn touch(&mut self, hash: u64, capacity: usize) {
        self.now += 1;
        if let Some(old) = self.age_of.insert(hash, self.now) {
            self.by_age.remove(&old);
        } else if self.age_of.len() > capacity {
            if let Some((_, evicted)) = self.by_age.pop_first() {
                self.age_of.remove(&evicted);
            }
        }
        self.by_age.insert(self.now, hash);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn text(seed: char, blocks: usize) -> Vec<u8> {
        std::iter::repeat_n(seed as u8, blocks * 8).collect()
    }

    #[test]
    fn second_lookup_hits_all_full_blocks() {
        let c = PrefixCache::new(100, 8);
        let p = b"0123456789abcdefXYZ"; // two full blocks and a partial one
        assert_eq!(c.lookup_and_insert(p).hit_blocks, 0);
        let found = c.lookup_and_insert(p);
        assert_eq!(
            found,
            Lookup {
                blocks: 2,
                hit_blocks: 2
            }
        );
        assert_eq!(c.hit_tokens(found), 4);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn only_the_common_prefix_hits() {
        let c = PrefixCache::new(100, 4);
        c.lookup_and_insert(b"aaaabbbbcccc");
        assert_eq!(c.lookup_and_insert(b"aaaabbbbdddd").hit_blocks, 2);
        // Same second block after a different first one: chained hashes must not match.
        assert_eq!(c.lookup_and_insert(b"zzzzbbbbcccc").hit_blocks, 0);
    }

    #[test]
    fn evicts_least_recently_used_at_capacity() {
        let c = PrefixCache::new(2, 8);
        let (a, b, d) = (text('a', 1), text('b', 1), text('d', 1));
        c.lookup_and_insert(&a);
        c.lookup_and_insert(&b);
        c.lookup_and_insert(&a); // refresh a: b is now the oldest
        c.lookup_and_insert(&d); // evicts b
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup_and_insert(&a).hit_blocks, 1);
        assert_eq!(c.lookup_and_insert(&b).hit_blocks, 0);
    }

    #[test]
    fn short_prompts_and_zero_capacity_skip_the_cache() {
        let c = PrefixCache::new(0, 4);
        c.lookup_and_insert(b"aaaabbbb");
        assert!(c.is_empty());
        let c = PrefixCache::new(10, 64);
        assert_eq!(c.lookup_and_insert(b"short").blocks, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn token_rule_rounds_up() {
        assert_eq!(tokens_for_chars(0), 0);
        assert_eq!(tokens_for_chars(1), 1);
        assert_eq!(tokens_for_chars(8), 2);
        assert_eq!(tokens_for_chars(9), 3);
    }
}
