//! Validation of the parsed file into the runtime: every check that can fail does so here,
//! with the YAML path, so nothing is discovered per request or by a panic at start.

use super::schema::*;
use super::ConfigError;
use crate::fleet::{Backend, Provider, Timeouts, UpstreamTls};
use crate::keys::{KeyEntry, KeyTable, ModelGlobs};
use crate::routes::{Route, RouteKind, RouteOpts, RouteTable, Target};
use crate::runtime::{ListenTls, LogSettings, Runtime, ServerSettings};
use crate::secret::Secret;
use pingora_core::utils::tls::WrappedX509;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:18080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:18081";
pub const DEFAULT_MAX_BODY: u64 = 16 << 20;

/// Compiles the file; returns `None` (with `errors` filled) when anything is wrong.
pub fn compile(mut file: FileConfig, errors: &mut Vec<ConfigError>) -> Option<Runtime> {
    let start = errors.len();
    let limits = super::limits::compile(&file.limits, file.server.trusted_proxies.take(), errors);
    let server = server(file.server, errors);
    let admin_listen = file.admin.listen.unwrap_or_else(|| DEFAULT_ADMIN.to_string());
    check_addr("admin.listen", &admin_listen, errors);
    if server.listen.contains(&admin_listen) {
        errors.push(ConfigError::new("admin.listen", "must differ from every server.listen address"));
    }
    let admin_token = admin_token(file.admin.token.as_deref(), &admin_listen, errors);
    let keys = keys(file.keys, &limits, errors);
    let providers: Vec<Arc<Provider>> =
        file.providers.into_iter().enumerate().filter_map(|(i, p)| provider(i, p, errors)).collect();
    let mut seen = HashSet::new();
    for p in &providers {
        if !seen.insert(p.name.clone()) {
            errors.push(ConfigError::new("providers", format!("provider name {:?} is used twice", p.name)));
        }
    }
    super::upstream::cross_check(&providers, errors);
    let routes = routes(file.routes, &providers, errors);
    let log = log(file.log, errors);
    let mcp = mcp(file.mcp, &routes, errors);
    if errors.len() > start {
        return None;
    }
    let labels: Vec<&str> = routes.routes().iter().map(|r| &*r.label).collect();
    let names: Vec<Arc<str>> = providers.iter().map(|p| p.name.clone()).collect();
    let pairs = max_key_model_pairs(file.admin.max_key_model_pairs, errors);
    let metrics = crate::observe::bound::BoundMetrics::new(&labels, &names, pairs);
    Some(Runtime {
        server,
        admin_listen,
        admin_token,
        keys,
        providers,
        routes,
        log,
        limits: limits.settings,
        mcp,
        metrics,
    })
}

/// `admin.max_key_model_pairs`: bounded, or the cap would not bound anything.
fn max_key_model_pairs(n: Option<usize>, errors: &mut Vec<ConfigError>) -> usize {
    use crate::observe::metrics::{DEFAULT_MAX_KEY_MODEL_PAIRS, MAX_KEY_MODEL_PAIRS};
    match n {
        None => DEFAULT_MAX_KEY_MODEL_PAIRS,
        Some(n) if n <= MAX_KEY_MODEL_PAIRS => n,
        Some(n) => {
            errors.push(ConfigError::new(
                "admin.max_key_model_pairs",
                format!(
                    "{n} is more than {MAX_KEY_MODEL_PAIRS}: the label pairs of mcas_tokens_total must stay bounded"
                ),
            ));
            DEFAULT_MAX_KEY_MODEL_PAIRS
        }
    }
}

fn check_addr(path: &str, addr: &str, errors: &mut Vec<ConfigError>) {
    if addr.parse::<SocketAddr>().is_err() {
        errors.push(ConfigError::new(path, format!("{addr:?} is not an address like \"127.0.0.1:18080\"")));
    }
}

/// `admin.token`, required when the admin listener is reachable from other hosts.
fn admin_token(
    token: Option<&str>,
    listen: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::observe::admin::AdminToken> {
    let loopback = listen.parse::<SocketAddr>().map(|a| a.ip().is_loopback()).unwrap_or(true);
    match token {
        Some(t) => match crate::observe::admin::AdminToken::new(t) {
            Ok(t) => Some(t),
            Err(msg) => {
                errors.push(ConfigError::new("admin.token", msg));
                None
            }
        },
        None if !loopback => {
            errors.push(ConfigError::new(
                "admin.token",
                format!(
                    "is required when admin.listen ({listen}) is not a loopback address: anyone who \
                     reaches it could read metrics and reload the config; set admin.token (e.g. \
                     \"${{MCAS_ADMIN_TOKEN}}\") or listen on 127.0.0.1"
                ),
            ));
            None
        }
        None => None,
    }
}

fn server(s: ServerSection, errors: &mut Vec<ConfigError>) -> ServerSettings {
    let listen = s.listen.map(OneOrMany::into_vec).unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    if listen.is_empty() {
        errors.push(ConfigError::new("server.listen", "needs at least one address"));
    }
    for (i, a) in listen.iter().enumerate() {
        check_addr(&format!("server.listen[{i}]"), a, errors);
    }
    let threads = s.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if threads == 0 {
        errors.push(ConfigError::new("server.threads", "must be at least 1"));
    }
    let max_body = s.max_body.map(|b| b.0).unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 {
        errors.push(ConfigError::new("server.max_body", "must be more than 0"));
    }
    let tls = s.tls.map(|t| {
        check_pem("server.tls.cert", &t.cert, PemKind::Certs, errors);
        check_pem("server.tls.key", &t.key, PemKind::Key, errors);
        ListenTls { cert: t.cert, key: t.key, http2: t.http2.unwrap_or(true) }
    });
    ServerSettings {
        listen,
        threads,
        max_body,
        tls,
        client_read_timeout: s.client_read_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        grace_period: s.grace_period.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        shutdown_timeout: s.shutdown_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        pid_file: s.pid_file,
        upgrade_sock: s.upgrade_sock,
        max_streams: positive("server.max_streams", s.max_streams, errors),
        max_tunnels: positive("server.max_tunnels", s.max_tunnels, errors),
    }
}

/// A cap that, when set, must allow at least one.
fn positive(path: &str, v: Option<usize>, errors: &mut Vec<ConfigError>) -> Option<usize> {
    if v == Some(0) {
        errors.push(ConfigError::new(path, "must be at least 1 (omit it for no cap)"));
    }
    v
}

enum PemKind {
    Certs,
    Key,
}

/// Reads PEM certificates (DER-checked, so Pingora's parser cannot panic on them later).
pub fn load_certs(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = item.map_err(|e| format!("{path}: invalid PEM: {e}"))?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("{path}: invalid certificate: {e}"))?;
        certs.push(der.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate found"));
    }
    Ok(certs)
}

fn check_pem(path: &str, file: &str, kind: PemKind, errors: &mut Vec<ConfigError>) {
    let result = match kind {
        PemKind::Certs => load_certs(file).map(|_| ()),
        PemKind::Key => std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}")).and_then(|d| {
            match rustls_pemfile::private_key(&mut d.as_slice()) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("{file}: no PEM private key found")),
                Err(e) => Err(format!("{file}: invalid PEM: {e}")),
            }
        }),
    };
    if let Err(msg) = result {
        errors.push(ConfigError::new(path, msg));
    }
}

fn parse_time(path: &str, text: &Option<String>, errors: &mut Vec<ConfigError>) -> Option<SystemTime> {
    let t = text.as_ref()?;
    match humantime::parse_rfc3339_weak(t) {
        Ok(v) => Some(v),
        Err(_) => {
            errors.push(ConfigError::new(path, format!("{t:?} is not an RFC 3339 time like \"2026-01-31T00:00:00Z\"")));
            None
        }
    }
}

fn keys(keys: Vec<KeySection>, limits: &super::limits::Compiled, errors: &mut Vec<ConfigError>) -> KeyTable {
    let mut table = KeyTable::default();
    let mut names = HashSet::new();
    if keys.is_empty() {
        errors.push(ConfigError::new(
            "keys",
            "at least one client key is required (without one every request is refused)",
        ));
    }
    for (i, k) in keys.into_iter().enumerate() {
        let path = format!("keys[{i}]");
        if k.name.trim().is_empty() {
            errors.push(ConfigError::new(format!("{path}.name"), "must not be empty"));
        } else if !names.insert(k.name.clone()) {
            errors.push(ConfigError::new(format!("{path}.name"), format!("key name {:?} is used twice", k.name)));
        }
        let digest = match (&k.key, &k.key_sha256) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(&path, "set either key or key_sha256, not both"));
                continue;
            }
            (None, None) => {
                errors.push(ConfigError::new(&path, "needs key (e.g. \"${ALICE_KEY}\") or key_sha256"));
                continue;
            }
            (Some(key), None) if key.is_empty() => {
                errors.push(ConfigError::new(format!("{path}.key"), "is empty"));
                continue;
            }
            (Some(key), None) => crate::keys::sha256(key.as_bytes()),
            (None, Some(hex_digest)) => match hex::decode(hex_digest.trim()) {
                Ok(bytes) if bytes.len() == 32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    d
                }
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.key_sha256"),
                        "must be 64 hex digits (sha256sum of the key)",
                    ));
                    continue;
                }
            },
        };
        let not_before = parse_time(&format!("{path}.not_before"), &k.not_before, errors);
        let expires = parse_time(&format!("{path}.expires"), &k.expires, errors);
        let key_limits = super::limits::key(&path, k.limits, limits, errors);
        let entry = KeyEntry::new(&k.name, digest, ModelGlobs(k.models), not_before, expires)
            .with_limits(key_limits)
            .with_priority(k.priority.unwrap_or(0));
        if !table.insert(entry) {
            errors.push(ConfigError::new(&path, "the same key is configured twice"));
        }
    }
    table
}

fn resolve(path: &str, host: &str, port: u16, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    super::host::lookup(path, host, port, errors).into_iter().next()
}

/// Every address of the URL's host (each one a backend, as the discovery task will find them).
fn resolve_all(path: &str, host: &str, port: u16, errors: &mut Vec<ConfigError>) -> Vec<SocketAddr> {
    let mut all = super::host::lookup(path, host, port, errors);
    // IPv4 when there is any, as the discovery task asks (src/fleet/discover/resolve.rs).
    if all.iter().any(SocketAddr::is_ipv4) {
        all.retain(SocketAddr::is_ipv4);
    }
    all.sort();
    all.dedup();
    all
}

fn provider(i: usize, p: ProviderSection, errors: &mut Vec<ConfigError>) -> Option<Arc<Provider>> {
    let path = format!("providers[{i}]");
    let start = errors.len();
    let mut fleet = super::upstream::fleet(&path, &p, errors);
    if p.name.trim().is_empty() || p.name == "by_model" {
        errors.push(ConfigError::new(format!("{path}.name"), "must be a non-empty name other than \"by_model\""));
    }
    // Sealed MCP ids carry `provider \n address \n token` (src/mcp/seal.rs): a newline in the
    // name would make a seal open to another backend. Logs and metric labels want none either.
    if p.name.chars().any(char::is_control) {
        errors.push(ConfigError::new(format!("{path}.name"), "must not contain control characters"));
    }
    let url = match url::Url::parse(&p.url) {
        Ok(u) => u,
        Err(e) => {
            errors.push(ConfigError::new(format!("{path}.url"), e.to_string()));
            return None;
        }
    };
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        s => {
            errors.push(ConfigError::new(format!("{path}.url"), format!("scheme {s:?} is not http or https")));
            return None;
        }
    };
    let Some(host) = url.host_str().map(str::to_string) else {
        errors.push(ConfigError::new(format!("{path}.url"), "has no host"));
        return None;
    };
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        errors.push(ConfigError::new(format!("{path}.url"), "must not carry a query, fragment or credentials"));
    }
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    let pool = super::pool::settings(&path, p.pool.as_ref(), errors);
    fleet.pool = pool;
    fleet.discover = super::discover::compile(&path, p.discover, p.backends.is_some(), (&host, port), errors);
    let mut backends: Vec<Arc<Backend>> = match p.backends {
        // Found by the discovery task (src/fleet/discover/), or kept from the running config
        // on a reload (src/reload.rs): never resolved at load, so `--check` and a start while
        // the service has no ready replica work.
        None if fleet.discover.as_ref().is_some_and(|d| !d.from_url) => vec![],
        None => resolve_all(&format!("{path}.url"), &host, port, errors)
            .into_iter()
            .map(|a| Arc::new(Backend::new(a, 1)))
            .collect(),
        Some(list) if list.is_empty() => {
            errors.push(ConfigError::new(format!("{path}.backends"), "is empty (omit it to use the url's host)"));
            vec![]
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| {
                let bpath = format!("{path}.backends[{j}]");
                let (addr, weight) = match b {
                    BackendSection::Address(a) => (a, 1),
                    BackendSection::Weighted(w) => (w.address, w.weight),
                };
                if weight == 0 {
                    errors.push(ConfigError::new(format!("{bpath}.weight"), "must be at least 1"));
                }
                let Some((h, port)) = super::host::split_host_port(&addr) else {
                    errors.push(ConfigError::new(&bpath, format!("{addr:?} is not host:port")));
                    return None;
                };
                resolve(&bpath, h, port, errors).map(|a| Arc::new(Backend::new(a, weight)))
            })
            .collect(),
    };
    let t = p.timeouts;
    let d = Timeouts::default();
    let timeouts = Timeouts {
        connect: t.connect.map(|x| x.0).unwrap_or(d.connect),
        read: t.read.map(|x| x.0).unwrap_or(d.read),
        write: t.write.map(|x| x.0).unwrap_or(d.write),
        idle: t.idle.map(|x| x.0).unwrap_or(d.idle),
    };
    crate::fleet::pool::attach(&p.name, &mut backends, pool, timeouts.idle);
    let mut ca_der = Vec::new();
    let upstream_tls = if tls {
        let ca = p.tls.ca_file.as_ref().and_then(|f| match load_certs(f) {
            Ok(certs) => Some(
                certs
                    .into_iter()
                    .inspect(|der| ca_der.push(der.clone()))
                    .map(|der| WrappedX509::new(der, pingora_core::utils::tls::parse_x509))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Err(msg) => {
                errors.push(ConfigError::new(format!("{path}.tls.ca_file"), msg));
                None
            }
        });
        Some(UpstreamTls {
            verify: p.tls.verify.unwrap_or(true),
            sni: p.tls.sni.clone().unwrap_or_else(|| host.clone()),
            ca,
            ca_der,
        })
    } else {
        if p.tls.verify.is_some() || p.tls.ca_file.is_some() || p.tls.sni.is_some() {
            errors.push(ConfigError::new(format!("{path}.tls"), "is set but the url is plain http"));
        }
        None
    };
    let api_key = p.api_key.filter(|k| !k.is_empty()).map(Secret::new);
    let models = ModelGlobs(p.models.unwrap_or_else(|| vec!["*".to_string()]));
    let dm_path = format!("{path}.default_model");
    let default_model = default_model(&dm_path, p.default_model, errors);
    if let Some(m) = default_model.as_ref().filter(|m| !models.allows(m)) {
        errors.push(ConfigError::new(dm_path, format!("{m:?} is not one of this provider's models")));
    }
    if errors.len() > start {
        return None;
    }
    Some(Arc::new(
        Provider::new(&p.name, host_header, base_path, upstream_tls, api_key, models, backends, timeouts)
            .with_fleet(fleet)
            .with_default_model(default_model),
    ))
}

fn routes(routes: Option<Vec<RouteSection>>, providers: &[Arc<Provider>], errors: &mut Vec<ConfigError>) -> RouteTable {
    let Some(list) = routes else {
        return match crate::routes::default_routes() {
            Ok(t) => t,
            Err(msg) => {
                errors.push(ConfigError::new("routes", msg));
                RouteTable::default()
            }
        };
    };
    let mut out = Vec::new();
    let mut patterns = HashSet::new();
    for (i, r) in list.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let target = if r.provider == "by_model" {
            Target::ByModel
        } else if let Some(idx) = providers.iter().position(|p| *p.name == *r.provider) {
            Target::Provider(idx)
        } else {
            errors.push(ConfigError::new(format!("{path}.provider"), format!("no provider is named {:?}", r.provider)));
            continue;
        };
        if !patterns.insert(r.path.clone()) {
            errors.push(ConfigError::new(format!("{path}.path"), format!("{:?} is routed twice", r.path)));
            continue;
        }
        if let Some(prefix) = &r.strip_prefix {
            let literal: String = r.path.split('*').next().unwrap_or("").to_string();
            if !literal.starts_with(prefix.trim_end_matches('/')) {
                errors.push(ConfigError::new(
                    format!("{path}.strip_prefix"),
                    format!("{prefix:?} is not a prefix of {:?}", r.path),
                ));
                continue;
            }
        }
        let opts = route_opts(&path, &r, errors);
        let default_model = route_default_model(&path, &r, &target, opts.kind, providers, errors);
        match Route::new(&r.path, target, r.strip_prefix) {
            Ok(route) if out.iter().any(|o: &Route| o.same_paths(&route)) => errors.push(ConfigError::new(
                format!("{path}.path"),
                format!("{:?} is unreachable: an earlier route matches exactly the same paths", r.path),
            )),
            Ok(mut route) => {
                route.opts = std::sync::Arc::new(opts);
                route.default_model = default_model;
                out.push(route)
            }
            Err(msg) => errors.push(ConfigError::new(format!("{path}.path"), msg)),
        }
    }
    RouteTable::new(out)
}

/// A model name as the gateway may write it into a request: non-empty, no control characters
/// or quotes.
fn default_model(path: &str, model: Option<String>, errors: &mut Vec<ConfigError>) -> Option<String> {
    let m = model?;
    if m.trim().is_empty() || m.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        errors.push(ConfigError::new(path, "must be a model name without control characters, quotes or backslashes"));
        return None;
    }
    Some(m)
}

/// `routes[].default_model`: must be served where the route leads.
fn route_default_model(
    path: &str,
    r: &RouteSection,
    target: &Target,
    kind: RouteKind,
    providers: &[Arc<Provider>],
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let field = format!("{path}.default_model");
    let m = default_model(&field, r.default_model.clone(), errors)?;
    if kind == RouteKind::Mcp {
        errors.push(ConfigError::new(field, "has no meaning on a route of kind mcp"));
        return None;
    }
    let served = match target {
        Target::Provider(i) => providers.get(*i).is_some_and(|p| p.models.allows(&m)),
        Target::ByModel => providers.iter().any(|p| p.models.allows(&m)),
    };
    if !served {
        errors.push(ConfigError::new(field, format!("{m:?} is not served by the provider(s) of this route")));
        return None;
    }
    Some(m)
}

fn log(l: LogSection, errors: &mut Vec<ConfigError>) -> LogSettings {
    let level = l.level.unwrap_or_else(|| "info".to_string());
    if !matches!(level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
        errors.push(ConfigError::new("log.level", format!("{level:?} is not one of error, warn, info, debug, trace")));
    }
    let dir = l.dir.filter(|d| {
        let bad = if d.is_empty() {
            Some("must not be empty (omit it to log to stdout)".to_string())
        } else {
            crate::observe::daily_file::plausible_dir(std::path::Path::new(d)).err()
        };
        if let Some(why) = &bad {
            errors.push(ConfigError::new("log.dir", why.clone()));
        }
        bad.is_none()
    });
    if l.keep_days == Some(0) {
        errors.push(ConfigError::new("log.keep_days", "must be at least 1 (omit it to keep every file)"));
    }
    if l.keep_days.is_some() && dir.is_none() && errors.iter().all(|e| e.path != "log.dir") {
        errors.push(ConfigError::new("log.keep_days", "needs log.dir"));
    }
    LogSettings { access_log: l.access_log.unwrap_or(true), level, dir: dir.map(Into::into), keep_days: l.keep_days }
}

fn route_opts(path: &str, r: &RouteSection, errors: &mut Vec<ConfigError>) -> RouteOpts {
    let kind = match r.kind.as_deref() {
        None | Some("openai") => RouteKind::OpenAi,
        Some("mcp") => RouteKind::Mcp,
        Some(other) => {
            errors.push(ConfigError::new(format!("{path}.kind"), format!("{other:?} is not openai or mcp")));
            RouteKind::OpenAi
        }
    };
    let positive = |field: &str, d: Option<super::units::HumanDuration>, errors: &mut Vec<ConfigError>| {
        let d = d.map(|d| d.0);
        if d.is_some_and(|d| d.is_zero()) {
            errors.push(ConfigError::new(format!("{path}.{field}"), "must be more than 0 (omit it for the default)"));
        }
        d
    };
    let idle_timeout = positive("idle_timeout", r.idle_timeout, errors);
    let heartbeat = positive("heartbeat", r.heartbeat, errors);
    if let (Some(h), Some(i)) = (heartbeat, idle_timeout) {
        if h >= i {
            errors.push(ConfigError::new(format!("{path}.heartbeat"), "must be shorter than idle_timeout"));
        }
    }
    for (field, v) in [
        ("max_streams", r.max_streams),
        ("max_tunnels", r.max_tunnels),
        ("max_streams_per_key", r.max_streams_per_key),
        ("max_tunnels_per_key", r.max_tunnels_per_key),
    ] {
        if v == Some(0) {
            errors.push(ConfigError::new(format!("{path}.{field}"), "must be at least 1 (omit it for no cap)"));
        }
    }
    if !r.websocket && (r.max_tunnels.is_some() || r.max_tunnels_per_key.is_some()) {
        errors.push(ConfigError::new(format!("{path}.max_tunnels"), "is set but websocket is false"));
    }
    RouteOpts {
        websocket: r.websocket,
        kind,
        idle_timeout,
        heartbeat,
        max_streams: r.max_streams,
        max_tunnels: r.max_tunnels,
        max_streams_per_key: r.max_streams_per_key,
        max_tunnels_per_key: r.max_tunnels_per_key,
        ping: super::ping::compile(path, r, errors),
    }
}

fn mcp(m: Option<McpSection>, routes: &RouteTable, errors: &mut Vec<ConfigError>) -> Option<crate::mcp::seal::Sealer> {
    let needs = routes.routes().iter().any(|r| r.opts.kind == RouteKind::Mcp);
    let Some(m) = m else {
        if needs {
            errors.push(ConfigError::new(
                "mcp.session_key",
                "routes of kind mcp need a session key (32 bytes, hex or base64), e.g. \"${MCAS_MCP_SESSION_KEY}\"",
            ));
        }
        return None;
    };
    let ttl = m.session_ttl.map(|d| d.0).unwrap_or(crate::mcp::seal::DEFAULT_TTL);
    if ttl.as_secs() < 1 {
        errors.push(ConfigError::new("mcp.session_ttl", "must be at least 1s"));
    }
    match crate::mcp::seal::Sealer::from_text(&m.session_key) {
        Ok(s) => Some(s.with_ttl(ttl)),
        Err(msg) => {
            errors.push(ConfigError::new("mcp.session_key", msg));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    /// Found by fuzz/fuzz_targets/seal_open.rs: a provider name with a newline does not survive
    /// a sealed MCP session id; `"a\n127.0.0.2:1"` would open as provider `a` pinned to
    /// 127.0.0.2:1, another backend.
    #[test]
    fn provider_names_with_control_characters_are_refused() {
        let env = |_: &str| None;
        let yaml = |name: &str| {
            format!(
                "keys:\n  - {{ name: k, key_sha256: \"{}\", models: [\"*\"] }}\nproviders:\n  - {{ name: \"{name}\", url: \"http://127.0.0.1:8000\" }}\n",
                "ab".repeat(32)
            )
        };
        for name in ["a\\n127.0.0.2:1", "a\\rb", "a\\tb"] {
            let errs = super::super::load_str(&yaml(name), &env).unwrap_err();
            assert!(errs.0.iter().any(|e| e.path == "providers[0].name" && e.message.contains("control")), "{errs}");
        }
        if let Err(errs) = super::super::load_str(&yaml("a b"), &env) {
            panic!("{errs}");
        }
    }
}
