//! Configuration reload (SIGHUP or `POST /reload` on the admin listener): compile the file
//! anew and swap it in whole, or keep the running one and say why. Backends that stay keep
//! their health state and in-flight counts; keys that stay (by name) keep their limit counters.
//!
//! Reloads are serialised: SIGHUP and any number of `POST /reload` at once run one after the
//! other, each reading the file when its turn comes, so the last one to run has read the file
//! as last written and none is lost (two interleaved would otherwise let an older read be
//! swapped in after a newer one, or carry state over from a runtime already replaced).

use crate::config::{self, ConfigErrors};
use crate::fleet::discover::{Discover, Member};
use crate::observe::metrics::metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Reloader {
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// `None` for `--demo`, whose config is built in memory.
    pub path: Option<String>,
    /// Held for the whole of a reload (read, compile, carry over, swap).
    turn: Arc<Mutex<()>>,
    /// The admin address actually listened on: it changes only on restart, so a reload may
    /// not drop `admin.token` while it is reachable from other hosts.
    bound_admin: String,
}

impl Reloader {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, path: Option<String>) -> Self {
        let bound_admin = runtime.load().admin_listen.clone();
        Reloader { runtime, path, turn: Arc::new(Mutex::new(())), bound_admin }
    }

    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.path else {
            return Err(config::ConfigError::new("", "this gateway was started without a config file").into());
        };
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let result = config::load_file(path, &config::process_env).and_then(|rt| self.keeps_admin_guarded(rt));
        let label = if result.is_ok() { "ok" } else { "rejected" };
        if let Some(m) = metrics() {
            m.reloads.with_label_values(&[label]).inc();
        }
        let mut new = match result {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("config reload rejected, keeping the running config:\n{e}");
                return Err(e);
            }
        };
        crate::server::remember_secrets(&new);
        let old = self.runtime.load_full();
        carry_over(&old, &mut new);
        if old.server.listen != new.server.listen
            || old.admin_listen != new.admin_listen
            || old.server.threads != new.server.threads
            || old.limits.store != new.limits.store
        {
            log::warn!(
                "listen addresses, threads and limits.store* change only on restart or --upgrade; the rest is applied"
            );
        }
        if old.log.dir != new.log.dir || old.log.keep_days != new.log.keep_days || old.log.level != new.log.level {
            log::warn!("log.dir, log.keep_days and log.level change only on restart or --upgrade");
        }
        self.runtime.store(Arc::new(new));
        log::info!("config reloaded from {path}");
        Ok(())
    }
}

impl Reloader {
    /// A running admin listener off loopback keeps needing a token, whatever the new file's
    /// `admin.listen` says.
    fn keeps_admin_guarded(&self, rt: Runtime) -> Result<Runtime, ConfigErrors> {
        let exposed = self.bound_admin.parse::<std::net::SocketAddr>().map(|a| !a.ip().is_loopback()).unwrap_or(true);
        if exposed && rt.admin_token.is_none() {
            return Err(config::ConfigError::new(
                "admin.token",
                format!("is required: the admin listener runs on {} (not loopback) until a restart", self.bound_admin),
            )
            .into());
        }
        Ok(rt)
    }
}

/// Reuses the backend objects (health, in-flight) of backends present before and after
/// ([`crate::fleet::members`]). A provider that discovers its backends from the same DNS
/// source as before keeps the set it discovered (the file does not list it).
fn carry_over(old: &Runtime, new: &mut Runtime) {
    new.keys.carry_limit_state(&old.keys);
    for p in new.providers.iter_mut() {
        let Some(prev) = old.providers.iter().find(|o| o.name == p.name) else { continue };
        let same_source = match (&p.fleet.discover, &prev.fleet.discover) {
            (Some(d), Some(was)) => !d.from_url && d.same_source(was) && !prev.backends.is_empty(),
            _ => false,
        };
        if same_source {
            *p = Arc::new(p.with_members(&prev.members()));
        }
        let Some(p) = Arc::get_mut(p) else { continue };
        crate::fleet::members::carry_state(prev, &mut p.backends);
    }
}

impl Reloader {
    /// DNS discovery found `members` for `provider` from `source`: swaps in the runtime with
    /// that provider's backends replaced, carried over as on a reload. Returns whether
    /// anything changed (not when the set is the same, empty, or the provider no longer
    /// discovers from `source`).
    pub fn apply_discovered(&self, provider: &str, source: &Discover, members: &[Member]) -> bool {
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.runtime.load_full();
        let Some(i) = old.providers.iter().position(|p| &*p.name == provider) else { return false };
        let prev = &old.providers[i];
        let discovers = prev.fleet.discover.as_ref().is_some_and(|d| d.same_source(source));
        let mut members = members.to_vec();
        members.sort();
        if !discovers || members.is_empty() || prev.members() == members {
            return false;
        }
        let mut next = prev.with_members(&members);
        crate::fleet::members::carry_state(prev, &mut next.backends);
        self.runtime.store(Arc::new(old.with_provider(i, Arc::new(next))));
        true
    }
}

/// Pingora does not handle SIGHUP: this background service turns it into a reload.
pub struct SighupService(pub Reloader);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SighupService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only via POST /reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = self.0.reload(); }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs the DNS discovery tasks (src/fleet/discover/task.rs) as a Pingora background service.
pub struct DiscoveryService(pub Reloader);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DiscoveryService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        crate::fleet::discover::task::run(self.0.clone(), shutdown).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runtime(admin: &str) -> Runtime {
        let keys = "keys: [{ name: a, key: \"client-key-0123456789\", models: [\"*\"] }]";
        config::load_str(&format!("admin: {{ {admin} }}\n{keys}\n"), &|_| None).unwrap()
    }

    /// The listener stays where it was bound until a restart, so its token must stay too.
    #[test]
    fn a_reload_keeps_an_exposed_admin_listener_guarded() {
        let exposed = runtime("listen: \"0.0.0.0:18081\", token: \"admin-token-0123456789\"");
        let r = Reloader::new(Arc::new(ArcSwap::from_pointee(exposed)), None);
        let e = r.keeps_admin_guarded(runtime("listen: \"127.0.0.1:18081\"")).unwrap_err();
        assert_eq!(e.0[0].path, "admin.token");
        assert!(r.keeps_admin_guarded(runtime("token: \"another-token-0123456789\"")).is_ok());
        let local = Reloader::new(Arc::new(ArcSwap::from_pointee(runtime(""))), None);
        assert!(local.keeps_admin_guarded(runtime("")).is_ok());
    }

    fn discovering(extra: &str) -> Runtime {
        let yaml = format!(
            "keys: [{{ name: a, key: \"client-key-0123456789\", models: [\"*\"] }}]\n\
             providers:\n  - {{ name: v, url: \"http://vllm.svc:8000/v1\", discover: {{ dns: \"vllm.svc:8000\"{extra} }} }}\n"
        );
        config::load_str(&yaml, &|_| None).unwrap()
    }

    /// A reload does not resolve a discovering provider: it keeps the set found (and its
    /// backends' state) while the DNS source is the same, and starts empty when it changed.
    #[test]
    fn a_reload_keeps_the_discovered_set_of_the_same_source() {
        let members = [("10.0.0.1:8000".parse().unwrap(), 1), ("10.0.0.2:8000".parse().unwrap(), 1)];
        let old = discovering("");
        let r = Reloader::new(Arc::new(ArcSwap::from_pointee(old)), None);
        assert!(r.runtime.load().providers[0].backends.is_empty());
        let source = r.runtime.load().providers[0].fleet.discover.clone().unwrap();
        assert!(r.apply_discovered("v", &source, &members));
        assert!(!r.apply_discovered("v", &source, &members), "the same set is no change");
        assert!(!r.apply_discovered("v", &source, &[]), "an empty answer never empties a fleet");
        let old = r.runtime.load_full();
        let mut same = discovering(", interval: 30s");
        carry_over(&old, &mut same);
        assert_eq!(same.providers[0].members(), members.to_vec());
        assert!(Arc::ptr_eq(&same.providers[0].backends[0], &old.providers[0].backends[0]));
        let mut other = discovering(", resolver: \"127.0.0.1:5353\"");
        carry_over(&old, &mut other);
        assert!(other.providers[0].backends.is_empty());
    }
}
