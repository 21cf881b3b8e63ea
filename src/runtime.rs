//! The compiled, immutable configuration the request path reads. A reload builds a new one
//! and swaps it in atomically; requests in flight keep the one they started with.

use crate::fleet::Provider;
use crate::keys::KeyTable;
use crate::routes::RouteTable;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub threads: usize,
    pub max_body: u64,
    pub tls: Option<ListenTls>,
    pub client_read_timeout: Duration,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    /// `server.pid_file` / `server.upgrade_sock` as written; `None`: in the runtime directory
    /// (see [`runtime_dir`]).
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    /// Gateway-wide caps on open event streams and WebSocket tunnels (`None`: no cap).
    pub max_streams: Option<usize>,
    pub max_tunnels: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ListenTls {
    pub cert: String,
    pub key: String,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub access_log: bool,
    pub level: String,
    /// `log.dir`: daily files instead of stdout/stderr (read at start; a reload keeps the first).
    pub dir: Option<std::path::PathBuf>,
    /// `log.keep_days`: days of files kept, today's included; `None` keeps all.
    pub keep_days: Option<u32>,
}

#[derive(Debug)]
pub struct Runtime {
    pub server: ServerSettings,
    pub admin_listen: String,
    /// `admin.token`: guards every admin endpoint when set; `POST /reload` is refused without it.
    pub admin_token: Option<crate::observe::admin::AdminToken>,
    pub keys: KeyTable,
    pub providers: Vec<Arc<Provider>>,
    pub routes: RouteTable,
    pub log: LogSettings,
    pub limits: crate::limits::LimitSettings,
    /// Seals MCP backend identities; `Some` whenever a route has `kind: mcp`.
    pub mcp: Option<crate::mcp::seal::Sealer>,
    /// Metric children of every (route, provider) pair and provider, bound once.
    pub metrics: crate::observe::bound::BoundMetrics,
}

impl Runtime {
    /// The first provider whose `models` globs match.
    pub fn provider_for_model(&self, model: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.models.allows(model))
    }

    /// `provider` when any of its backends may take a request, else its first fallback that
    /// can (one level: a fallback's own fallbacks are not followed); `None` when none can.
    pub fn serving(&self, provider: &Arc<Provider>) -> Option<Arc<Provider>> {
        // The clock is read only if a circuit is not closed.
        let now = &crate::fleet::LazyNow::default();
        if provider.any_usable_at(now) {
            return Some(provider.clone());
        }
        provider
            .fleet
            .fallbacks
            .iter()
            .filter_map(|name| self.providers.iter().find(|p| *p.name == **name))
            .find(|p| p.any_usable_at(now))
            .cloned()
    }

    /// This runtime with provider `i` replaced (DNS discovery changed its backends): keys share
    /// their state, metric children are bound again as on a reload.
    pub fn with_provider(&self, i: usize, provider: Arc<Provider>) -> Runtime {
        let mut providers = self.providers.clone();
        if let Some(slot) = providers.get_mut(i) {
            *slot = provider;
        }
        let labels: Vec<&str> = self.routes.routes().iter().map(|r| &*r.label).collect();
        let names: Vec<Arc<str>> = providers.iter().map(|p| p.name.clone()).collect();
        let metrics = crate::observe::bound::BoundMetrics::new(&labels, &names, self.metrics.max_key_model_pairs);
        Runtime {
            server: self.server.clone(),
            admin_listen: self.admin_listen.clone(),
            admin_token: self.admin_token.clone(),
            keys: self.keys.clone(),
            providers,
            routes: self.routes.clone(),
            log: self.log.clone(),
            limits: self.limits.clone(),
            mcp: self.mcp.clone(),
            metrics,
        }
    }
}

/// File names of the pid file and upgrade socket in the runtime directory.
pub const PID_FILE: &str = "mcas-gateway.pid";
pub const UPGRADE_SOCK: &str = "mcas-gateway-upgrade.sock";

/// Where the pid file and the upgrade socket go unless `server.pid_file` / `server.upgrade_sock`
/// say otherwise: `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`; the first of a
/// colon-separated list), else the config file's directory, else (`--demo`, no file)
/// `$XDG_RUNTIME_DIR`, else the working directory. Never a shared directory such as /tmp: any
/// local user could create the upgrade socket there first and be handed the listening sockets
/// on the next upgrade. The result is absolute, so a daemonised process (which changes to /)
/// finds the same path.
pub fn runtime_dir(config_path: Option<&str>, env: &crate::config::Env) -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    let from_env =
        |name: &str| env(name).and_then(|v| v.split(':').next().map(str::to_string)).filter(|v| !v.is_empty());
    let dir = from_env("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| {
            config_path.map(|p| match Path::new(p).parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
        })
        .or_else(|| from_env("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    std::path::absolute(&dir).unwrap_or(dir)
}

impl ServerSettings {
    /// The pid file and upgrade socket paths Pingora is given.
    pub fn process_files(&self, config_path: Option<&str>, env: &crate::config::Env) -> (String, String) {
        let dir = runtime_dir(config_path, env);
        let at = |name: &str| dir.join(name).display().to_string();
        (
            self.pid_file.clone().unwrap_or_else(|| at(PID_FILE)),
            self.upgrade_sock.clone().unwrap_or_else(|| at(UPGRADE_SOCK)),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
    }

    #[test]
    fn runtime_dir_prefers_systemd_then_the_config_file() {
        let sd = env(&[("RUNTIME_DIRECTORY", "/run/mcas-gateway:/run/other"), ("XDG_RUNTIME_DIR", "/run/user/1")]);
        assert_eq!(runtime_dir(Some("/etc/mcas/gateway.yaml"), &sd), PathBuf::from("/run/mcas-gateway"));
        let plain = env(&[("XDG_RUNTIME_DIR", "/run/user/1")]);
        assert_eq!(runtime_dir(Some("/etc/mcas/gateway.yaml"), &plain), PathBuf::from("/etc/mcas"));
        assert_eq!(runtime_dir(None, &plain), PathBuf::from("/run/user/1"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(runtime_dir(Some("gateway.yaml"), &env(&[])), cwd);
        assert_eq!(runtime_dir(Some("conf/gateway.yaml"), &env(&[])), cwd.join("conf"));
        // No config file and no runtime directory: the working directory (wherever that is),
        // never a shared default such as /tmp.
        assert_eq!(runtime_dir(None, &env(&[])), cwd);
    }
}
