//! Assembles the Pingora server: the proxy service on the configured listeners, the admin
//! listener, and the SIGHUP reload watcher, then runs until a signal ends it.

use crate::observe::admin::AdminApp;
use crate::proxy::connection_gate::{Gate, PerIpConnections};
use crate::proxy::Gateway;
use crate::reload::{Reloader, SighupService};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::prelude::*;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Instant;

/// Pingora's own flags, passed through.
#[derive(Debug, Default, Clone)]
pub struct ProcessFlags {
    pub daemon: bool,
    pub upgrade: bool,
}

/// The redacting logger (src/observe/logging.rs); `RUST_LOG` wins over `level`.
pub fn init_logging(level: &str) {
    crate::observe::logging::init(level);
}

/// [`init_logging`] with `log:` applied: with `log.dir`, the process log and the access log
/// go to its daily files (src/observe/daily_file.rs) instead of stderr and stdout.
pub fn init_logging_for(log: &crate::runtime::LogSettings) {
    use crate::observe::{access_log, daily_file::DailyFile, logging};
    let files = log.dir.as_ref().map(|dir| DailyFile::shared(dir.clone(), log.keep_days));
    if let Some(f) = &files {
        access_log::to_files(f.clone());
        eprintln!("mcas-gateway: logging to {}/mcas-gateway-YYYY-MM-DD.log (UTC days)", f.dir().display());
    }
    logging::init_to(&log.level, files);
}

/// Registers the secrets of `runtime` with the log filter: provider keys, and the digests
/// the key table holds for client keys (src/observe/redact.rs).
pub fn remember_secrets(runtime: &Runtime) {
    for p in &runtime.providers {
        if let Some(k) = &p.api_key {
            crate::observe::redact::remember(k.expose());
        }
    }
    runtime.keys.for_each_digest(crate::observe::redact::remember_digest);
}

/// Starts serving; returns only if Pingora could not start.
pub fn run(runtime: Runtime, config_path: Option<String>, flags: ProcessFlags) -> anyhow::Result<()> {
    if !flags.upgrade {
        listen_free(
            listen_addresses(&runtime),
            " (is another mcas-gateway running? To replace a running instance without refusing a \
             request, start the new one with --upgrade)",
        )?;
    }
    remember_secrets(&runtime);
    warn_about(&runtime);
    // Pingora's grace period is whole seconds.
    let grace = std::time::Duration::from_secs(runtime.server.grace_period.as_secs());
    let (pid_file, upgrade_sock) = runtime.server.process_files(config_path.as_deref(), &crate::config::process_env);
    log::info!("pid file {pid_file}, upgrade socket {upgrade_sock}");
    let mut conf = ServerConf {
        threads: runtime.server.threads,
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(runtime.server.shutdown_timeout.as_secs()),
        pid_file,
        upgrade_sock,
        ..Default::default()
    };
    // Connect failures are retried on the next backend by our own selection (fail_to_connect).
    conf.max_retries = 16;
    // Pingora keeps idle upstream connections in one LRU (per connector) of this size: make room
    // for every `providers[].pool.max_idle` on top of the default, so pooled backends keep what
    // they may keep (docs/pingora.md, "Upstream connection pools"). Set at start: a reload that
    // raises max_idle takes effect at the next upgrade.
    conf.upstream_keepalive_pool_size += pooled_idle(&runtime);
    // One single-threaded runtime per thread: connections stay on the thread that accepted
    // them, which spares the cross-thread wake-ups of a work-stealing runtime on every request.
    conf.work_stealing = false;
    let opt = Opt { daemon: flags.daemon, upgrade: flags.upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listen = runtime.server.listen.clone();
    let tls = runtime.server.tls.clone();
    let admin_listen = runtime.admin_listen.clone();
    let shared = Arc::new(ArcSwap::from_pointee(runtime));
    let reloader = Reloader::new(shared.clone(), config_path);

    let drain = crate::drain::Drain::new(grace);
    // `limits.per_ip.connections` (and cooling-off addresses): counted around the proxy,
    // refused at accept.
    let mut gateway = Gateway::new(shared.clone(), drain.clone());
    // The shared limits store lives as long as the process: a reload that changes
    // `limits.store` takes effect at the next start (reload.rs says so).
    gateway.store = crate::limits::store::SharedLimits::start(&shared.load().limits.store)?;
    let gate = Gate::new(shared.clone(), gateway.guard.clone());
    let app = pingora_proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = Service::new("mcas-gateway".to_string(), PerIpConnections::new(app, gate.clone(), drain.clone()));
    proxy.set_connection_filter(gate);
    for addr in &listen {
        proxy.add_listener(listener(addr, tls.as_ref())?);
    }
    let mut admin =
        Service::new("mcas-admin".to_string(), AdminApp { reloader: reloader.clone(), started: Instant::now() });
    admin.add_tcp(&admin_listen);
    let sighup = pingora::services::background::background_service("sighup-reload", SighupService(reloader.clone()));
    let probes = pingora::services::background::background_service(
        "health-probes",
        crate::fleet::probe::service(shared.clone()),
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(sighup);
    server.add_service(probes);
    server.add_service(pingora::services::background::background_service(
        "dashboard-sampler",
        crate::observe::dashboard::SamplerService,
    ));
    server.add_service(pingora::services::background::background_service(
        "dns-discovery",
        crate::reload::DiscoveryService(reloader),
    ));
    server.add_service(pingora::services::background::background_service(
        "inference-scrapes",
        crate::fleet::inference::scrape::service(shared.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "drain",
        crate::drain::DrainService { drain, grace },
    ));
    log::info!("mcas-gateway listening on {} (admin {admin_listen})", listen.join(", "));
    server.run(pingora::server::RunArgs::default());
    // Pingora has stopped every service.
    exit_served()
}

/// The end of a process that served until told to stop (Pingora's grace period over, or the
/// drain finding no connection open, `crate::drain`): the access log lines still queued are
/// written out, then status 0.
pub fn exit_served() -> ! {
    crate::observe::access_log::flush();
    std::process::exit(0)
}

/// The addresses a start binds, each with the setting that names it.
pub fn listen_addresses(rt: &Runtime) -> Vec<(&'static str, &str)> {
    let server = rt.server.listen.iter().map(|a| ("server.listen", a.as_str()));
    server.chain([("admin.listen", rt.admin_listen.as_str())]).collect()
}

/// A fresh start (not `--upgrade`, which receives the running instance's sockets instead of
/// binding) needs its addresses free. Pingora binds them in each service's own thread,
/// retries an address in use for 30 s (`TCP_LISTENER_MAX_TRY` in
/// vendor/pingora-core/src/listeners/l4.rs), then panics in that thread (`Failed to build
/// listeners`, vendor/pingora-core/src/services/listening.rs) while the process lives on,
/// listening on nothing: a service manager sees it running. So each address is bound here first,
/// as Pingora binds it (`SO_REUSEADDR`, which std sets too), and let go at once; one that cannot be
/// bound is an error naming its setting, and the process exits 1 before anything starts. (An
/// address taken in the instant between this check and Pingora's bind still takes Pingora's way.)
/// `in_use` is said after the error when the address is taken.
pub fn listen_free<'a>(addrs: impl IntoIterator<Item = (&'a str, &'a str)>, in_use: &str) -> anyhow::Result<()> {
    for (setting, addr) in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse { in_use } else { "" };
            anyhow::bail!("{setting}: cannot listen on {addr}: {e}{hint}");
        }
    }
    Ok(())
}

/// One client listener. Pingora's default 64 KiB read buffer in front of every accepted
/// socket would be resident for the life of each idle stream or tunnel; its HTTP/1 layer
/// reads headers and bodies into buffers of its own, so plain TCP needs none, and TLS
/// (which reads record by record) gets one TLS record's worth.
fn listener(addr: &str, tls: Option<&crate::runtime::ListenTls>) -> anyhow::Result<ListenerConfig> {
    const TLS_READ_BUFFER: usize = 16 * 1024 + 256;
    let config = ListenerConfig::tcp(addr);
    Ok(match tls {
        None => config.l4_buffer(L4BufferSettings::default().read(0)),
        Some(t) => {
            let mut settings = TlsSettings::intermediate(&t.cert, &t.key)?;
            if t.http2 {
                // Many event streams share one connection (browsers allow six HTTP/1.1
                // connections per host); WebSocket clients negotiate HTTP/1.1.
                settings.enable_h2();
            }
            config.tls(settings).l4_buffer(L4BufferSettings::default().read(TLS_READ_BUFFER))
        }
    })
}

/// The idle connections `providers[].pool` lets all pooled backends keep together.
fn pooled_idle(rt: &Runtime) -> usize {
    rt.providers
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter_map(|b| b.pool.as_ref())
        .map(|p| p.settings.max_idle)
        .sum()
}

fn warn_about(rt: &Runtime) {
    for p in &rt.providers {
        if p.tls.as_ref().is_some_and(|t| !t.verify) {
            log::warn!("provider {}: TLS certificate verification is OFF (providers[].tls.verify: false)", p.name);
        }
    }
}
