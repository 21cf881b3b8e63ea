//! Backend selection as a pure function: (policy, ring, what each backend looks like now,
//! what this request already tried) → an index. The caller supplies the view (health, circuit,
//! in-flight), so this file holds no clocks or atomics and is unit tested directly.

use super::ketama::Ring;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Consistent hashing on the request's hash key, with optional bounded load.
    Ketama,
    RoundRobin,
    /// Fewest requests in flight (relative to weight).
    LeastInflight,
    /// Scored on each replica's own load and the gateway's prefix index (`fleet/inference/`);
    /// here only when a request carries no demand (then like least in-flight).
    Inference,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Ketama => "ketama",
            Balance::RoundRobin => "round_robin",
            Balance::LeastInflight => "least_inflight",
            Balance::Inference => "inference",
        }
    }
}

/// One backend as selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Healthy and its circuit lets a request through.
    pub usable: bool,
    pub inflight: usize,
    pub weight: usize,
}

pub struct Request<'a> {
    pub balance: Balance,
    pub ring: &'a Ring,
    /// The hash key (ketama only).
    pub key: &'a [u8],
    /// Bounded-load epsilon (ketama only); `None`: plain consistent hashing.
    pub epsilon: Option<f64>,
    /// Round-robin cursor (also breaks least-inflight ties).
    pub cursor: usize,
    /// Backends this request already failed on.
    pub tried: &'a [usize],
}

/// The most a backend of `weight` may hold when one more request arrives: `(1 + ε) ×` its
/// share of the in-flight total, rounded down but never below the rounded-up share (so the
/// bounds always leave room for the newcomer).
pub fn bound(total_inflight: usize, weight: usize, total_weight: usize, epsilon: f64) -> usize {
    let share = (total_inflight + 1) as f64 * weight as f64 / total_weight.max(1) as f64;
    // `x.floor() as usize` is `x as usize` (the cast truncates toward zero and saturates, and
    // both give 0 below 1); the share is never negative, so its ceiling is the truncation plus
    // one when something was cut off. Without the libm calls `floor` and `ceil` become here.
    let truncated = share as usize;
    let ceil = if (truncated as f64) < share { truncated.saturating_add(1) } else { truncated };
    (((1.0 + epsilon) * share) as usize).max(ceil)
}

pub fn choose(req: &Request<'_>, slots: &[Slot]) -> Option<usize> {
    let candidate = |i: usize| slots.get(i).is_some_and(|s| s.usable) && !req.tried.contains(&i);
    let n = slots.len();
    if !(0..n).any(candidate) {
        return None;
    }
    let rotated = move || (0..n).map(move |k| (req.cursor + k) % n).filter(move |&i| candidate(i));
    match req.balance {
        Balance::RoundRobin => rotated().next(),
        Balance::LeastInflight | Balance::Inference => {
            rotated().min_by(|&a, &b| load(&slots[a]).total_cmp(&load(&slots[b])))
        }
        Balance::Ketama => {
            // Bounded load: the in-flight and weight totals over the usable backends.
            let totals = req.epsilon.map(|eps| {
                let usable = slots.iter().filter(|s| s.usable);
                let (total, weight) = usable.fold((0, 0), |(t, w), s| (t + s.inflight, w + s.weight));
                (total, weight, eps)
            });
            let fits = |i: usize| {
                totals.is_none_or(|(total, weight, eps)| slots[i].inflight < bound(total, slots[i].weight, weight, eps))
            };
            req.ring
                .walk(req.key)
                .find(|&i| candidate(i) && fits(i))
                // Everyone is at the bound (or the ring is short): the least loaded one.
                .or_else(|| rotated().min_by(|&a, &b| load(&slots[a]).total_cmp(&load(&slots[b]))))
        }
    }
}

fn load(s: &Slot) -> f64 {
    s.inflight as f64 / s.weight.max(1) as f64
}

/// A ring and slots for the tests of the choices built on this module.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Ring, Slot};
    use std::net::SocketAddr;

    /// `n` backends of weight 1, at 10.0.0.1… port 8000.
    pub fn ring(n: usize) -> Ring {
        let list: Vec<_> = (0..n).map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)), 1)).collect();
        Ring::new(&list)
    }

    /// Usable slots of weight 1 with these in-flight counts.
    pub fn slots(inflight: &[usize]) -> Vec<Slot> {
        inflight.iter().map(|&n| Slot { usable: true, inflight: n, weight: 1 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{ring, slots};
    use super::*;

    fn req<'a>(balance: Balance, ring: &'a Ring, key: &'a [u8], tried: &'a [usize]) -> Request<'a> {
        Request { balance, ring, key, epsilon: Some(0.25), cursor: 0, tried }
    }

    #[test]
    fn ketama_is_sticky_and_skips_down_and_tried() {
        let r = ring(4);
        let s = slots(&[0, 0, 0, 0]);
        let first = choose(&req(Balance::Ketama, &r, b"session-1", &[]), &s).unwrap();
        assert_eq!(choose(&req(Balance::Ketama, &r, b"session-1", &[]), &s), Some(first));
        let second = choose(&req(Balance::Ketama, &r, b"session-1", &[first]), &s).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, r.walk(b"session-1").find(|&i| i != first).unwrap(), "next on the ring");
        let mut down = s.clone();
        down[first].usable = false;
        assert_eq!(choose(&req(Balance::Ketama, &r, b"session-1", &[]), &down), Some(second));
        let none: Vec<Slot> = s.iter().map(|x| Slot { usable: false, ..*x }).collect();
        assert_eq!(choose(&req(Balance::Ketama, &r, b"session-1", &[]), &none), None);
        assert_eq!(choose(&req(Balance::Ketama, &r, b"session-1", &[0, 1, 2, 3]), &s), None);
    }

    #[test]
    fn bounded_load_walks_past_a_full_backend() {
        let r = ring(4);
        let home = choose(&req(Balance::Ketama, &r, b"hot", &[]), &slots(&[0, 0, 0, 0])).unwrap();
        // 15 in flight, 5 on the hot key's home: the bound for the 16th is max(floor(1.25*4), 4) = 5.
        let mut inflight = [3, 3, 3, 3];
        inflight[home] = 6;
        let s = slots(&inflight);
        let got = choose(&req(Balance::Ketama, &r, b"hot", &[]), &s).unwrap();
        assert_ne!(got, home);
        let mut plain = req(Balance::Ketama, &r, b"hot", &[]);
        plain.epsilon = None;
        assert_eq!(choose(&plain, &s), Some(home));
    }

    #[test]
    fn bound_without_libm_rounds_as_floor_and_ceil() {
        let by_libm = |t: usize, w: usize, tw: usize, eps: f64| {
            let share = (t + 1) as f64 * w as f64 / tw.max(1) as f64;
            (((1.0 + eps) * share).floor() as usize).max(share.ceil() as usize)
        };
        let counts = [0, 1, 2, 3, 7, 15, 16, 99, 1000, 1 << 40, usize::MAX / 2, usize::MAX - 1];
        let weights = [0, 1, 2, 3, 5, 7, 100, 1 << 30];
        let eps = [0.0, 0.1, 0.25, 0.5, 1.0, 3.0, -0.5, -1.0, -2.0, 1e300, f64::INFINITY, f64::NAN, -0.0];
        for &t in &counts {
            for &w in &weights {
                for &tw in &weights {
                    for &e in &eps {
                        assert_eq!(bound(t, w, tw, e), by_libm(t, w, tw, e), "{t} {w} {tw} {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn bound_rounds_down_but_leaves_room() {
        assert_eq!(bound(15, 1, 4, 0.25), 5);
        assert_eq!(bound(0, 1, 4, 0.25), 1);
        assert_eq!(bound(4, 1, 4, 0.25), 2);
        assert_eq!(bound(15, 2, 5, 0.25), 8);
    }

    #[test]
    fn skewed_keys_stay_under_the_bound() {
        // Simulate 16 concurrent requests, half of them on one key: nobody exceeds 1.25 × mean.
        let r = ring(4);
        let mut inflight = vec![0usize; 4];
        let mut assigned = Vec::new();
        for k in 0..16 {
            let key = if k % 2 == 0 { "hot".to_string() } else { format!("cold-{k}") };
            let s = slots(&inflight);
            let i = choose(&req(Balance::Ketama, &r, key.as_bytes(), &[]), &s).unwrap();
            inflight[i] += 1;
            assigned.push(i);
        }
        assert!(inflight.iter().all(|&n| n <= 5), "{inflight:?}");
    }

    #[test]
    fn round_robin_and_least_inflight() {
        let r = ring(3);
        let s = slots(&[0, 0, 0]);
        let picks: Vec<_> = (0..6)
            .map(|c| choose(&Request { cursor: c, ..req(Balance::RoundRobin, &r, b"", &[]) }, &s).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let s = slots(&[2, 0, 1]);
        assert_eq!(choose(&req(Balance::LeastInflight, &r, b"", &[]), &s), Some(1));
        assert_eq!(choose(&req(Balance::LeastInflight, &r, b"", &[1]), &s), Some(2));
        let mut down = slots(&[0, 0, 0]);
        down[1].usable = false;
        assert_eq!(choose(&Request { cursor: 1, ..req(Balance::RoundRobin, &r, b"", &[]) }, &down), Some(2));
    }
}
