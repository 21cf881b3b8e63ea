//! Backend selection: round robin over the backends that are up, skipping those this request
//! already failed on. With every backend down it still offers one (a probe) so a fleet that
//! recovers is noticed without waiting for the cool-down of every replica.

use super::{Backend, Provider};
use std::sync::Arc;

pub fn select(provider: &Provider, tried: &[usize]) -> Option<(usize, Arc<Backend>)> {
    let n = provider.backends.len();
    if n == 0 || tried.len() >= n {
        return None;
    }
    let start = provider.next_cursor();
    let candidates = (0..n).map(|i| (start + i) % n).filter(|i| !tried.contains(i));
    let mut fallback = None;
    for i in candidates {
        let b = &provider.backends[i];
        if b.health.is_up() {
            return Some((i, b.clone()));
        }
        fallback.get_or_insert(i);
    }
    fallback.map(|i| (i, provider.backends[i].clone()))
}
