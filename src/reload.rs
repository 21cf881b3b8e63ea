//! Configuration reload (SIGHUP or `POST /reload` on the admin listener): compile the file
//! anew and swap it in whole, or keep the running one and say why. Backends that stay keep
//! their health state and in-flight counts; keys that stay (by name) keep their limit counters.

use crate::config::{self, ConfigErrors};
use crate::observe::metrics::metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;

#[derive(Clone)]
pub struct Reloader {
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// `None` for `--demo`, whose config is built in memory.
    pub path: Option<String>,
}

impl Reloader {
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.path else {
            return Err(config::ConfigError::new("", "this gateway was started without a config file").into());
        };
        let result = config::load_file(path, &config::process_env);
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
        {
            log::warn!("listen addresses and threads change only on restart or --upgrade; the rest is applied");
        }
        self.runtime.store(Arc::new(new));
        log::info!("config reloaded from {path}");
        Ok(())
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
