//! Prompt text for workloads (benchmarks of prefix routing and the fleet).

use rand::Rng;

/// At least `chars` characters of words and sentences drawn from `rng`.
pub fn words(rng: &mut impl Rng, chars: usize) -> String {
    const W: &[&str] = &["alpha", "bravo", "cache", "delta", "echo", "fleet", "gamma", "hash", "input", "kernel"];
    let mut s = String::new();
    while s.len() < chars {
        s.push_str(W[rng.gen_range(0..W.len())]);
        s.push_str(if rng.gen_bool(0.1) { ". " } else { " " });
    }
    s
}
