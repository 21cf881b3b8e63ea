//! One key's shared window, as this instance sees it: requests reserved from Redis in
//! batches and spent here without a round trip, the tokens Redis counted at the last
//! exchange plus those charged here since.
//!
//! Accuracy. Redis grants a request at most once per window (the script never grants past
//! `rpm`), and this instance stops spending a grant at a local deadline computed from the
//! moment the call was *sent*, which is never later than the end of Redis's window — so
//! requests never exceed `rpm` per window. What can be lost is budget reserved but unspent
//! when the window ends: at most 1.5 × [`batch`] per instance (a batch plus a prefetch left
//! at half a batch), and unspent budget of a key idle here is given back (`RETURN`). With the
//! batch at `rpm / 300`, a window admits at least `rpm × (1 − 0.5 % × instances)`: 98.5 %
//! with three instances, 98 % with four. Tokens are known only after a response, so `tpm`
//! overshoots by the requests in flight when it is reached (as on one instance) plus what
//! other instances charged since this one last synchronised: each flushes every
//! `tpm / 200` tokens; within 10 % of the budget every charge is sent at once and admissions
//! wait for fresh totals (one round trip each), so only responses in flight overshoot.

use super::super::{KeyLimits, LimitKind, Refusal, Snapshot};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Requests reserved per round trip.
pub fn batch(rpm: u64) -> u64 {
    rpm.div_ceil(300).max(1)
}

/// Tokens charged here before they are sent to Redis.
pub fn token_batch(tpm: u64) -> u64 {
    (tpm / 200).max(1)
}

/// Within 10 % of the token budget every charge is sent at once, and every admission waits
/// for fresh totals: what other instances charged is then at most one round trip old.
fn near(tokens: u64, tpm: u64) -> bool {
    tokens.saturating_mul(10) >= tpm.saturating_mul(9)
}

#[derive(Debug, Default)]
struct State {
    /// Local ms after which the grant below is void (`0`: never synchronised).
    deadline: u64,
    /// Redis's start of the window the grant belongs to.
    start: i64,
    /// Requests granted and not spent yet.
    left: u64,
    /// Requests and tokens Redis counted at the last exchange.
    requests: u64,
    tokens: u64,
    /// Tokens charged here and not yet sent.
    pending: u64,
    /// Redis had nothing more to grant in this window.
    exhausted: bool,
    /// Last local spend (for giving back an idle grant).
    last_spend: u64,
}

/// What the fast path decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Admitted from the local grant; `sync` asks for a background exchange (prefetch or
    /// token flush).
    Admitted {
        sync: bool,
    },
    Refused(Refusal),
    /// No grant for this window here: the request waits for one exchange.
    NeedSync,
}

/// The answer of `RESERVE`.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub granted: u64,
    pub requests: u64,
    pub tokens: u64,
    pub left_ms: u64,
    pub start: i64,
}

impl Reply {
    pub fn from_values(v: &[i64]) -> Option<Reply> {
        let [g, r, t, left, s] = v else { return None };
        let u = |x: i64| u64::try_from(x).unwrap_or(0);
        Some(Reply { granted: u(*g), requests: u(*r), tokens: u(*t), left_ms: u(*left), start: *s })
    }
}

#[derive(Debug, Default)]
pub struct SharedWindow {
    /// Its hash in Redis.
    key: String,
    state: Mutex<State>,
    /// A background exchange is under way (at most one per key).
    syncing: AtomicBool,
}

impl SharedWindow {
    pub fn new(key: String) -> Self {
        SharedWindow { key, ..Default::default() }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// This instance's grant has ended (the entry may be forgotten).
    pub fn expired(&self, now: u64) -> bool {
        let st = self.lock();
        now >= st.deadline && st.pending == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fast path: spend one request of the local grant.
    pub fn take(&self, l: &KeyLimits, now: u64) -> Take {
        let mut st = self.lock();
        if now >= st.deadline {
            return Take::NeedSync;
        }
        let retry_after = Duration::from_millis(st.deadline - now);
        if l.tpm.is_some_and(|t| st.tokens + st.pending >= t) {
            return Take::Refused(Refusal { kind: LimitKind::Tokens, retry_after });
        }
        if l.tpm.is_some_and(|t| near(st.tokens + st.pending, t)) {
            // The last 10 % of the token budget is spent on fresh totals (one round trip).
            return Take::NeedSync;
        }
        let mut sync = l.tpm.is_some_and(|t| st.pending >= token_batch(t));
        if let Some(rpm) = l.rpm {
            if st.left == 0 {
                if st.exhausted {
                    return Take::Refused(Refusal { kind: LimitKind::Requests, retry_after });
                }
                return Take::NeedSync;
            }
            st.left -= 1;
            st.last_spend = now;
            sync |= !st.exhausted && st.left <= batch(rpm) / 2;
        }
        Take::Admitted { sync: sync && self.claim_sync() }
    }

    /// After an exchange: the tokens counted so far refuse the request?
    pub fn tokens_refusal(&self, l: &KeyLimits, now: u64) -> Option<Refusal> {
        let st = self.lock();
        let over = l.tpm.is_some_and(|t| st.tokens + st.pending >= t);
        over.then(|| Refusal {
            kind: LimitKind::Tokens,
            retry_after: Duration::from_millis(st.deadline.saturating_sub(now)),
        })
    }

    /// A request that was admitted here but refused by a later check gives its unit back.
    pub fn untake(&self, l: &KeyLimits) {
        if l.rpm.is_some() {
            self.lock().left += 1;
        }
    }

    /// True for the one caller that may start a background exchange.
    pub fn claim_sync(&self) -> bool {
        !self.syncing.swap(true, Ordering::AcqRel)
    }

    pub fn sync_done(&self) {
        self.syncing.store(false, Ordering::Release);
    }

    /// Before an exchange: the tokens to send (taken out of `pending`).
    pub fn take_pending(&self) -> u64 {
        std::mem::take(&mut self.lock().pending)
    }

    /// After a failed exchange: the tokens go back to `pending`.
    pub fn restore_pending(&self, tokens: u64) {
        self.lock().pending += tokens;
    }

    /// Applies a `RESERVE` reply of a call sent at `sent` (local ms). When `spend_one`, one
    /// granted request is used at once by the waiting caller; returns whether there was one.
    pub fn apply(&self, l: &KeyLimits, r: &Reply, sent: u64, spend_one: bool) -> bool {
        let mut st = self.lock();
        if r.start != st.start {
            // A new window: what was left of the previous one is void.
            st.left = 0;
            st.start = r.start;
            st.requests = 0;
            st.tokens = 0;
        }
        // Replies of concurrent exchanges may arrive out of order: counts only grow.
        st.deadline = st.deadline.max(sent + r.left_ms);
        st.requests = st.requests.max(r.requests);
        st.tokens = st.tokens.max(r.tokens);
        st.left += r.granted;
        st.exhausted = l.rpm.is_some_and(|rpm| r.requests >= rpm);
        if spend_one && l.rpm.is_some() {
            if st.left == 0 {
                return false;
            }
            st.left -= 1;
            st.last_spend = sent;
        }
        true
    }

    /// How long until the window ends, for a refusal after an exchange.
    pub fn refusal(&self, kind: LimitKind, now: u64) -> Refusal {
        let st = self.lock();
        Refusal { kind, retry_after: Duration::from_millis(st.deadline.saturating_sub(now)) }
    }

    /// Charges tokens; true when enough are pending to send them.
    pub fn charge(&self, l: &KeyLimits, tokens: u64) -> bool {
        let mut st = self.lock();
        st.pending = st.pending.saturating_add(tokens);
        l.tpm.is_some_and(|t| st.pending >= token_batch(t) || near(st.tokens + st.pending, t))
    }

    /// A grant unspent for `idle` ms in a window still current: (window start, requests)
    /// to give back; the local grant is emptied.
    pub fn idle_grant(&self, now: u64, idle: u64) -> Option<(i64, u64)> {
        let mut st = self.lock();
        if st.left == 0 || now >= st.deadline || now < st.last_spend.saturating_add(idle) {
            return None;
        }
        Some((st.start, std::mem::take(&mut st.left)))
    }

    /// The counts for the `x-ratelimit-*` headers: used = counted by Redis less what this
    /// instance holds unspent.
    pub fn snapshot(&self, l: &KeyLimits, now: u64) -> Snapshot {
        let st = self.lock();
        let live = now < st.deadline;
        Snapshot {
            limits: *l,
            requests: if live { st.requests.saturating_sub(st.left) } else { 0 },
            tokens: if live { st.tokens + st.pending } else { st.pending },
            reset: Duration::from_millis(st.deadline.saturating_sub(now)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lim(rpm: Option<u64>, tpm: Option<u64>) -> KeyLimits {
        KeyLimits { rpm, tpm, concurrency: None, window: Duration::from_secs(60) }
    }

    fn reply(granted: u64, requests: u64, tokens: u64, start: i64) -> Reply {
        Reply { granted, requests, tokens, left_ms: 60_000, start }
    }

    #[test]
    fn spends_the_grant_then_asks_again() {
        let w = SharedWindow::default();
        let l = lim(Some(600), None);
        assert_eq!(w.take(&l, 0), Take::NeedSync);
        assert!(w.apply(&l, &reply(2, 2, 0, 7), 0, true));
        // One left; at or below half a batch a background exchange is asked for, once.
        assert_eq!(w.take(&l, 1), Take::Admitted { sync: true });
        assert_eq!(w.take(&l, 2), Take::NeedSync);
        w.sync_done();
        assert!(!w.apply(&l, &reply(0, 600, 0, 7), 3, true));
        assert_eq!(w.take(&l, 4), Take::Refused(w.refusal(LimitKind::Requests, 4)));
    }

    #[test]
    fn a_new_window_voids_the_old_grant_and_the_deadline_is_conservative() {
        let w = SharedWindow::default();
        let l = lim(Some(600), None);
        w.apply(&l, &reply(2, 2, 0, 1), 100, false);
        assert!(matches!(w.take(&l, 60_099), Take::Admitted { .. }));
        assert_eq!(w.take(&l, 60_100), Take::NeedSync, "the grant ends with the window as sent");
        w.apply(&l, &reply(2, 2, 0, 2), 60_100, false);
        assert_eq!(w.snapshot(&l, 60_100).requests, 0);
    }

    #[test]
    fn tokens_refuse_once_the_shared_count_is_reached() {
        let w = SharedWindow::default();
        let l = lim(None, Some(1000));
        w.apply(&l, &reply(0, 0, 500, 1), 0, true);
        assert!(matches!(w.take(&l, 1), Take::Admitted { .. }));
        assert!(w.charge(&l, 500), "5 tokens pending or more are sent");
        assert!(matches!(w.take(&l, 2), Take::Refused(Refusal { kind: LimitKind::Tokens, .. })));
    }

    #[test]
    fn near_the_token_budget_every_charge_is_sent() {
        let w = SharedWindow::default();
        let l = lim(None, Some(10_000));
        w.apply(&l, &reply(0, 0, 1000, 1), 0, true);
        assert!(!w.charge(&l, 1), "far from the budget, charges wait for a batch of 50");
        w.sync_done();
        w.apply(&l, &reply(0, 0, 9000, 1), 0, true);
        assert!(w.charge(&l, 1));
        assert_eq!(w.take(&l, 1), Take::NeedSync, "admissions wait for fresh totals");
    }

    #[test]
    fn an_idle_grant_is_given_back_once() {
        let w = SharedWindow::default();
        let l = lim(Some(3000), None);
        w.apply(&l, &reply(10, 10, 0, 5), 0, true);
        assert_eq!(w.idle_grant(500, 1000), None);
        assert_eq!(w.idle_grant(1000, 1000), Some((5, 9)));
        assert_eq!(w.idle_grant(2000, 1000), None);
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(batch(600), 2);
        assert_eq!(batch(1), 1);
        assert_eq!(batch(60_000), 200);
        assert_eq!(token_batch(12_000), 60);
    }
}
