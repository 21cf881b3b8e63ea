//! The YAML file as written: serde types that reject unknown fields. Defaults and units are
//! documented on each field; `conf/gateway.yaml` is the commented reference.

use super::units::{ByteSize, HumanDuration};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub keys: Vec<KeySection>,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    /// Absent: `/v1/*` routes by the request's `model`.
    #[serde(default)]
    pub routes: Option<Vec<RouteSection>>,
    #[serde(default)]
    pub log: LogSection,
    /// Per-key defaults and the per-address pre-authentication guard.
    #[serde(default)]
    pub limits: LimitsSection,
    /// MCP session sealing (routes with `kind: mcp`).
    #[serde(default)]
    pub mcp: Option<McpSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// 32-byte key (64 hex digits or base64) sealing backend identities into the session ids
    /// and endpoint URLs clients see; usually `${MCAS_MCP_SESSION_KEY}`. Every gateway instance
    /// that serves the same clients needs the same key.
    pub session_key: String,
    /// How long a sealed session id (and legacy endpoint URL) stays good after the gateway
    /// sealed it; older ones get 404 and the client initializes a new session. Default 24h.
    pub session_ttl: Option<HumanDuration>,
}

/// One address or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address(es), `host:port`. Default `0.0.0.0:18080`
    /// (`MCAS_GATEWAY_HOST`/`MCAS_GATEWAY_PORT` override the first).
    pub listen: Option<OneOrMany>,
    /// Worker threads of the proxy service. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Largest request body accepted (413 beyond). Default 16MiB.
    pub max_body: Option<ByteSize>,
    /// Serve TLS on every listener with this certificate and key (PEM files).
    pub tls: Option<TlsListenSection>,
    /// How long a client connection may stay silent (per read). Default 60s.
    pub client_read_timeout: Option<HumanDuration>,
    /// On SIGTERM: how long in-flight requests and streams may run before they are cut. Default 30s.
    pub grace_period: Option<HumanDuration>,
    /// After the grace period: how long the runtime may take to stop. Default 5s.
    pub shutdown_timeout: Option<HumanDuration>,
    /// PID file (used by `--daemon` and `--upgrade`). Default `mcas-gateway.pid` in the runtime
    /// directory: `$RUNTIME_DIRECTORY` under systemd, else the config file's directory.
    pub pid_file: Option<String>,
    /// Socket on which `--upgrade` receives the listeners. Default `mcas-gateway-upgrade.sock`
    /// in the runtime directory (as `pid_file`).
    pub upgrade_sock: Option<String>,
    /// Event streams (SSE responses) open at once over the whole gateway; beyond → 503. Default: no cap.
    pub max_streams: Option<usize>,
    /// WebSocket tunnels open at once over the whole gateway; beyond → 503. Default: no cap.
    pub max_tunnels: Option<usize>,
    /// Peers (CIDR blocks or addresses) whose `X-Forwarded-For` is believed for the client
    /// address used by `limits.per_ip`. Default: none (the TCP peer is the client).
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenSection {
    pub cert: String,
    pub key: String,
    /// Offer HTTP/2 to clients (ALPN `h2`, else HTTP/1.1). Default true.
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Admin listener (`/metrics`, `/health`, `POST /reload`). Default `127.0.0.1:18081`.
    pub listen: Option<String>,
    /// Bearer token (at least 16 characters, usually `${MCAS_ADMIN_TOKEN}`). When set, every
    /// admin endpoint needs it; `POST /reload` is refused without it. Required when `listen`
    /// is not a loopback address. Default: none.
    pub token: Option<String>,
    /// The most distinct (key name, model) label pairs of `mcas_tokens_total`; tokens of
    /// later pairs count under the model `other`, so the series stay bounded however many
    /// keys and models there are. Default 256, at most 100000.
    pub max_key_model_pairs: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// What logs and metrics show; never the key.
    pub name: String,
    /// The key itself, usually `${ENV_VAR}`.
    pub key: Option<String>,
    /// Hex SHA-256 of the key, so the file holds no secret.
    pub key_sha256: Option<String>,
    /// Glob patterns of the models this key may use. Default: none.
    pub models: Vec<String>,
    /// RFC 3339 instant before which the key is refused.
    pub not_before: Option<String>,
    /// RFC 3339 instant from which the key is refused.
    pub expires: Option<String>,
    /// This key's limits; each absent field takes `limits.defaults`.
    pub limits: Option<KeyLimitsSection>,
    /// Admission-queue priority (`balance: inference`): higher goes first. Default 0.
    pub priority: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    /// `scheme://host[:port]/base/path`; the base path is prefixed to every forwarded path.
    pub url: String,
    /// Sent upstream as `Authorization: Bearer …` in place of the client's credentials.
    pub api_key: Option<String>,
    /// Glob patterns of the models this provider serves. Default `["*"]`.
    pub models: Option<Vec<String>>,
    /// Replicas sharing the URL's scheme and base path: `host:port` or `{address, weight}`.
    pub backends: Option<Vec<BackendSection>>,
    /// Backends found in DNS instead of listed (src/config/discover.rs).
    pub discover: Option<super::discover::DiscoverSection>,
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
    #[serde(default)]
    pub tls: ProviderTls,
    /// `ketama` (default), `round_robin`, `least_inflight` or `inference`.
    pub balance: Option<BalanceSection>,
    /// `balance: inference` settings (`config/inference.rs`).
    pub inference: Option<super::inference::InferenceSection>,
    /// LoRA adapters: learn which replica serves and has hot which adapter, and route an
    /// adapter's requests by it (`config/lora.rs`). Default: off.
    pub lora: Option<super::lora::LoraSection>,
    /// Ordered sources of the ketama key, the first present wins: `header:NAME`, `api_key`,
    /// `body:user`, `prefix`, `client_ip`. Default
    /// `[header:x-session-id, body:user, prefix, api_key, client_ip]`.
    pub hash_key: Option<Vec<String>>,
    /// Bounded load (ketama): no backend takes more than `(1 + epsilon) ×` the mean in-flight
    /// requests. Default 0.25; `off` for plain consistent hashing.
    pub epsilon: Option<EpsilonSection>,
    /// Active health checks. Default: on for providers with `backends:` or `discover:`, off otherwise.
    pub health: Option<HealthSection>,
    /// Circuit breaker fed by connect failures, timeouts and 5xx.
    pub circuit: Option<CircuitSection>,
    /// Extra attempts on other backends after a failed connect (nothing is retried once bytes
    /// went upstream). Default 2.
    pub retries: Option<usize>,
    /// Providers to use, in order, when every backend of this one is down or open.
    pub fallbacks: Option<Vec<String>>,
    /// The model a request that names none is checked and charged for (and sent upstream
    /// with); must match `models`. Default: none (a key not allowed `*` must name the model).
    pub default_model: Option<String>,
    /// Cap on connections per backend, with a bounded queue in front (`config/pool.rs`).
    /// Default: no cap.
    pub pool: Option<super::pool::PoolSection>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSection {
    Ketama,
    RoundRobin,
    LeastInflight,
    Inference,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EpsilonSection {
    Value(f64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Default true once the section is present.
    pub enabled: Option<bool>,
    /// Path probed with `GET` (from the backend's root), with the provider's key. Default `/health`.
    pub path: Option<String>,
    /// Time between probes of one backend. Default 5s.
    pub interval: Option<HumanDuration>,
    /// A probe not answered 2xx within this fails. Default 2s.
    pub timeout: Option<HumanDuration>,
    /// Failed probes in a row that mark a backend down. Default 2.
    pub unhealthy_after: Option<u32>,
    /// Good probes in a row that mark it up again. Default 2.
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitSection {
    /// Failures within `window` that open the circuit. Default 5.
    pub failures: Option<u32>,
    /// Failure-counting window. Default 10s.
    pub window: Option<HumanDuration>,
    /// Time an open circuit refuses traffic before one half-open probe request. Default 5s.
    pub cooldown: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendSection {
    Address(String),
    Weighted(WeightedBackend),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub address: String,
    #[serde(default = "one")]
    pub weight: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTimeouts {
    /// TCP (and TLS) connect. Default 5s; exceeded → 504.
    pub connect: Option<HumanDuration>,
    /// Longest silence while waiting for response bytes (time to first token, gaps between
    /// tokens). Default 300s; exceeded → 504.
    pub read: Option<HumanDuration>,
    /// Longest wait to write request bytes upstream. Default 60s.
    pub write: Option<HumanDuration>,
    /// How long an idle upstream connection is kept for reuse. Default 60s.
    pub idle: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTls {
    /// Verify the upstream certificate and host name. Default true; false is logged at start.
    pub verify: Option<bool>,
    /// Extra CA bundle (PEM) trusted for this provider, besides the system roots.
    pub ca_file: Option<String>,
    /// SNI and certificate name to expect. Default: the URL's host.
    pub sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// `/v1/*` (a trailing `*` matches the rest of the path), `/exact`, `/a/*/b` (one segment).
    pub path: String,
    /// A provider name, or `by_model` to pick by the request body's `model`.
    pub provider: String,
    /// Leading path removed before the provider's base path is prefixed.
    pub strip_prefix: Option<String>,
    /// Accept `Upgrade: websocket` and tunnel it. Default false (426 to upgrade requests).
    #[serde(default)]
    pub websocket: bool,
    /// `openai` (default) or `mcp` (backends are MCP servers: sessions are sealed and pinned).
    pub kind: Option<String>,
    /// Longest silence (per read, either side) of a WebSocket tunnel or an event stream before
    /// the gateway ends it. Default: the provider's `timeouts.read` (300s).
    pub idle_timeout: Option<HumanDuration>,
    /// When an event stream has been silent this long, send `: keepalive` (at an event
    /// boundary). Default: off.
    pub heartbeat: Option<HumanDuration>,
    /// Concurrent event streams on this route, all keys together (503 beyond). Default: no cap.
    pub max_streams: Option<usize>,
    /// Concurrent WebSocket tunnels on this route, all keys together (503 beyond). Default: no cap.
    pub max_tunnels: Option<usize>,
    /// Concurrent event streams on this route per key (429 beyond). Default: no cap.
    pub max_streams_per_key: Option<usize>,
    /// Concurrent WebSocket tunnels on this route per key (429 beyond). Default: no cap.
    pub max_tunnels_per_key: Option<usize>,
    /// The model a request on this route that names none is checked and charged for (and sent
    /// upstream with); wins over the provider's. Default: the provider's `default_model`.
    pub default_model: Option<String>,
    /// WebSocket keepalive by the gateway on this route's tunnels (`config/ping.rs`).
    /// Default: off.
    pub ping: Option<super::ping::PingSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// One JSON line per request on stdout. Default true.
    pub access_log: Option<bool>,
    /// `error`, `warn`, `info`, `debug`; `RUST_LOG` wins. Default `info`.
    pub level: Option<String>,
    /// Directory of daily files `mcas-gateway-YYYY-MM-DD.log` (UTC) for the process and
    /// access logs. Default: none (stdout and stderr, i.e. journald).
    pub dir: Option<String>,
    /// Days of files kept in `dir`, today's included (≥ 1). Default: all kept.
    pub keep_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Limits of keys that set none themselves. Default: unlimited.
    pub defaults: Option<KeyLimitsSection>,
    /// Per client address, before the key is checked.
    pub per_ip: Option<PerIpSection>,
    /// Length of the counting window of `rpm` and `tpm`. Default 60s.
    pub window: Option<HumanDuration>,
    /// Every per-address limit counts an IPv6 client per network of this many leading bits
    /// (1–128; 128 counts single addresses). Default 64.
    pub ipv6_prefix: Option<u8>,
    /// Where rpm, tpm and concurrency are counted: `local` (this instance) or a Redis URL
    /// (`redis://[:password@]host:port[/db]`, `rediss://` for TLS) shared by every instance
    /// pointing at it. Default `local`.
    pub store: Option<String>,
    /// The Redis URL is one node of a Redis Cluster. Default false.
    pub store_cluster: Option<bool>,
    /// When the store cannot be reached: `local` (count on this instance) or `closed` (503).
    /// Default `local`.
    pub on_store_error: Option<String>,
    /// Longest a request waits for the store. Default 50ms.
    pub store_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsSection {
    /// Requests per window (429 `rate_limit_requests`).
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion, from `usage`) per window (429 `rate_limit_tokens`).
    pub tpm: Option<u64>,
    /// Requests in flight, streams included (429 `rate_limit_concurrency`).
    pub concurrency: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerIpSection {
    /// Requests per minute from one client address. Default: unlimited.
    pub rpm: Option<u64>,
    /// Failed authentications per minute from one address before it is refused for
    /// `cooloff`. Default 20; 0 turns the guard off.
    pub auth_failures_per_min: Option<u64>,
    /// How long an address that failed too often is refused (429). Default 60s.
    pub cooloff: Option<HumanDuration>,
    /// Addresses tracked at once (least recently seen evicted beyond). Default 100000.
    pub max_tracked: Option<usize>,
    /// Open connections from one address; a connection beyond it is closed as soon as it is
    /// accepted, before anything is read from it. Addresses in `server.trusted_proxies` are
    /// exempt. Default: no cap.
    pub connections: Option<u64>,
}
