//! The discovery tasks: one per discovering provider, started and stopped as reloads add,
//! change or remove providers' `discover` settings (the running config is looked at every
//! second).

use super::resolve::{self, Answer};
use super::status::{self, Outcome};
use super::{Discover, Member, MIN_INTERVAL};
use crate::reload::Reloader;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the running config is checked for providers whose discovery starts or stops.
const FOLLOW: Duration = Duration::from_secs(1);

/// Runs until `shutdown` changes (Pingora's shutdown watch).
pub async fn run(reloader: Reloader, mut shutdown: watch::Receiver<bool>) {
    let mut tasks: HashMap<Arc<str>, (Discover, JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(FOLLOW);
    loop {
        tokio::select! {
            _ = tick.tick() => follow(&reloader, &mut tasks),
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
}

/// Starts a task for each provider that discovers and has none (or one with other settings),
/// stops the tasks of providers that no longer discover.
fn follow(reloader: &Reloader, tasks: &mut HashMap<Arc<str>, (Discover, JoinHandle<()>)>) {
    let rt = reloader.runtime.load();
    let wanted: HashMap<Arc<str>, Discover> =
        rt.providers.iter().filter_map(|p| Some((p.name.clone(), p.fleet.discover.clone()?))).collect();
    tasks.retain(|name, (d, task)| {
        let keep = wanted.get(name) == Some(d) && !task.is_finished();
        if !keep {
            task.abort();
            status::forget(name);
        }
        keep
    });
    for (name, d) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name) {
            let task = tokio::spawn(discover(reloader.clone(), slot.key().clone(), d.clone()));
            slot.insert((d, task));
        }
    }
}

/// One provider: resolve, apply a changed set, wait `interval` (or the TTL if shorter), again.
async fn discover(reloader: Reloader, provider: Arc<str>, d: Discover) {
    let resolver = loop {
        match resolve::resolver(&d) {
            Ok(r) => break r,
            Err(e) => {
                log::warn!("provider {provider}: discovery of {} cannot start: {e}", d.query);
                status::record(&provider, &d, Outcome::Failed, Some(e));
                tokio::time::sleep(d.interval).await;
            }
        }
    };
    loop {
        let wait = match resolve::resolve(&resolver, &d).await {
            Ok(Answer { members, .. }) if members.is_empty() => {
                log::warn!("provider {provider}: {} has no address; keeping the last good set", d.query);
                status::record(&provider, &d, Outcome::Empty, Some("the answer has no address".into()));
                d.interval
            }
            Ok(Answer { members, valid_for }) => {
                let outcome = apply(&reloader, &provider, &d, members).await;
                status::record(&provider, &d, outcome, None);
                valid_for.clamp(MIN_INTERVAL, d.interval.max(MIN_INTERVAL))
            }
            Err(e) => {
                log::warn!("provider {provider}: resolving {} failed, keeping the last good set: {e}", d.query);
                status::record(&provider, &d, Outcome::Failed, Some(e));
                d.interval
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Swaps the set in off the async threads: it waits its turn behind a running reload.
async fn apply(reloader: &Reloader, provider: &Arc<str>, d: &Discover, members: Vec<Member>) -> Outcome {
    let (r, p, d2, n) = (reloader.clone(), provider.clone(), d.clone(), members.len());
    match tokio::task::spawn_blocking(move || r.apply_discovered(&p, &d2, &members)).await {
        Ok(true) => {
            log::info!("provider {provider}: {} now has {n} backend(s)", d.query);
            Outcome::Changed
        }
        Ok(false) => Outcome::Unchanged,
        Err(e) => {
            log::error!("provider {provider}: applying discovered backends failed: {e}");
            Outcome::Failed
        }
    }
}
