//! Configuration reload (SIGHUP or `POST /reload` on the admin listener): compile the file
//! anew and swap it in whole, or keep the running one and say why. Backends that stay keep
//! their health state and in-flight counts; keys that stay (by name) keep their limit counters.
//!
//! Reloads are serialised: SIGHUP and any number of `POST /reload` at once run one after the
//! other, each reading the file when its turn comes, so the last one to run has read the file
//! as last written and none is lost (two interleaved would otherwise let an older read be
//! swapped in after a newer one, or carry state over from a runtime already replaced).

use crate::config::{self, ConfigErrors};
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

/// Reuses the backend objects (health, in-flight) of backends present before and after.
fn carry_over(old: &Runtime, new: &mut Runtime) {
    new.keys.carry_limit_state(&old.keys);
    for p in new.providers.iter_mut() {
        let Some(prev) = old.providers.iter().find(|o| o.name == p.name) else { continue };
        let Some(p) = Arc::get_mut(p) else { continue };
        for b in p.backends.iter_mut() {
            if let Some(same) = prev.backends.iter().find(|o| o.addr == b.addr && o.weight == b.weight) {
                *b = same.clone();
            }
        }
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
}
