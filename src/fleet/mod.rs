//! Provider pools: where a request may go. A provider is one URL (scheme, host, base path)
//! with one or more backends (socket addresses resolved at load), its key and timeouts, and
//! how it spreads requests over its backends ([`Fleet`]): balance policy and hash key
//! ([`select`], [`ketama`], [`hash_key`]), active health ([`health`], probed by [`probe`]),
//! circuit breaker ([`circuit`]), retries and fallbacks.

pub mod backend_http;
pub mod circuit;
pub mod discover;
pub mod hash_key;
pub mod health;
pub mod inference;
pub mod ketama;
pub mod lora;
pub mod members;
pub mod pool;
pub mod probe;
pub mod prom_text;
pub mod select;
pub mod ticker;

use crate::clock;
use crate::keys::ModelGlobs;
use crate::observe::metrics::metrics;
use crate::secret::Secret;
use circuit::{Circuit, CircuitSettings, CircuitState};
use hash_key::HashSource;
use health::{ActiveHealth, HealthSettings};
use ketama::Ring;
use pingora_core::utils::tls::WrappedX509;
use select::{Balance, Slot};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(300),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// TLS towards the provider.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Verify certificate and host name.
    pub verify: bool,
    /// Name sent as SNI and checked against the certificate.
    pub sni: String,
    /// Extra trusted CAs (with the system roots' place taken by these when set).
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The same CAs as DER, for the health probes' HTTP client.
    pub ca_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("sni", &self.sni)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` as text (`ip:port`), written once: the access log copies it into every line.
    pub addr_text: Box<str>,
    pub weight: usize,
    /// Requests in flight on this backend right now.
    pub inflight: AtomicUsize,
    /// MCP sessions this instance opened on it and has not seen end (see `Provider::place`).
    pub sessions: AtomicUsize,
    /// Set by the active probes.
    pub health: ActiveHealth,
    /// Fed by the request path (connect failures, timeouts, 5xx).
    pub circuit: Circuit,
    /// Its metric series, bound once.
    pub metrics: crate::observe::bound::BackendMetrics,
    /// `providers[].pool`: the cap on connections and the queue; `None`: no cap.
    pub pool: Option<Arc<pool::ConnPool>>,
}

impl Backend {
    pub fn new(addr: SocketAddr, weight: usize) -> Self {
        let mut text = Vec::with_capacity(21);
        crate::addr_text::push_socket_addr(&mut text, addr);
        Backend {
            addr,
            addr_text: String::from_utf8(text).unwrap_or_else(|_| addr.to_string()).into(),
            weight,
            inflight: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            health: ActiveHealth::default(),
            circuit: Circuit::default(),
            metrics: Default::default(),
            pool: None,
        }
    }
}

/// Backends whose selection view is built on the stack (more take a heap vector).
const STACK_SLOTS: usize = 8;

/// How [`Provider::pick_by`] chooses: the balance, whether open sessions count as load (new
/// sessions are placed by load), the inference ticket to score and charge, and the model
/// (an adapter's requests go where it is served and hot: [`lora`]).
#[derive(Clone, Copy)]
struct Pick<'a> {
    balance: Balance,
    sessions: bool,
    ticket: Option<&'a inference::Ticket>,
    model: Option<&'a str>,
}

/// How a provider spreads requests over its backends and copes with their failures.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub balance: Balance,
    /// Ordered sources of the ketama key; the first one present wins.
    pub hash_key: Vec<HashSource>,
    /// Bounded-load epsilon; `None` turns bounded load off.
    pub epsilon: Option<f64>,
    /// Active probes; `None`: not probed (backends count as healthy).
    pub health: Option<HealthSettings>,
    pub circuit: CircuitSettings,
    /// Extra attempts on other backends after a failed connect. Default 2.
    pub retries: usize,
    /// Providers tried, in order, when every backend of this one is down or open.
    pub fallbacks: Vec<String>,
    /// Backends found in DNS (`discover`, or the URL's host without `backends`); `None`: fixed.
    pub discover: Option<discover::Discover>,
    /// `providers[].pool`, kept so backends found later (discovery) get the same cap.
    pub pool: Option<pool::PoolSettings>,
    /// `balance: inference`: scrape, weights, saturation and queue settings.
    pub inference: Option<inference::InferenceSettings>,
    /// `lora`: learn which replica serves and has hot which adapter, and route by it.
    pub lora: Option<lora::LoraSettings>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            balance: Balance::Ketama,
            hash_key: HashSource::defaults(),
            epsilon: Some(0.25),
            health: None,
            circuit: CircuitSettings::default(),
            retries: 2,
            fallbacks: Vec::new(),
            discover: None,
            pool: None,
            inference: None,
            lora: None,
        }
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// `Host` header value sent upstream: the URL's host, with its port when not the default.
    pub host_header: String,
    /// The URL's path without a trailing slash (`""` for none): prefixed to forwarded paths.
    pub base_path: String,
    /// `None` for plain HTTP.
    pub tls: Option<UpstreamTls>,
    pub api_key: Option<Secret>,
    pub models: ModelGlobs,
    /// The model a request without one is checked and charged for (`providers[].default_model`).
    pub default_model: Option<String>,
    pub backends: Vec<Arc<Backend>>,
    pub timeouts: Timeouts,
    pub fleet: Fleet,
    /// The consistent-hash ring over `backends` (addresses and weights).
    pub ring: Ring,
    /// Round-robin cursor.
    cursor: AtomicUsize,
    /// Header values sent on every request, built once here rather than per request.
    pub headers: ProviderHeaders,
    /// Load signals, prefix index and admission queue of `balance: inference`.
    pub inference: Option<Arc<inference::InferenceState>>,
    /// What each replica serves and has hot of LoRA adapters (`lora`).
    pub lora: Option<Arc<lora::LoraState>>,
    /// Clients of the gateway's own requests to the backends (probes, scrapes).
    pub http: backend_http::Clients,
}

/// `Authorization: Bearer <api_key>` (marked sensitive: never printed) and `Host`.
#[derive(Debug, Clone)]
pub struct ProviderHeaders {
    pub authorization: Option<http::HeaderValue>,
    pub host: Option<http::HeaderValue>,
}

impl ProviderHeaders {
    fn new(api_key: Option<&Secret>, host: &str) -> Self {
        let authorization = api_key.and_then(|k| {
            let mut v = http::HeaderValue::try_from(format!("Bearer {}", k.expose())).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        ProviderHeaders { authorization, host: http::HeaderValue::from_str(host).ok() }
    }
}

impl Provider {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        host_header: String,
        base_path: String,
        tls: Option<UpstreamTls>,
        api_key: Option<Secret>,
        models: ModelGlobs,
        backends: Vec<Arc<Backend>>,
        timeouts: Timeouts,
    ) -> Self {
        let ring = Ring::new(&backends.iter().map(|b| (b.addr, b.weight)).collect::<Vec<_>>());
        let headers = ProviderHeaders::new(api_key.as_ref(), &host_header);
        Provider {
            name: name.into(),
            host_header,
            base_path,
            tls,
            api_key,
            models,
            default_model: None,
            backends,
            timeouts,
            fleet: Fleet::default(),
            ring,
            cursor: AtomicUsize::new(0),
            http: Default::default(),
            headers,
            inference: None,
            lora: None,
        }
    }

    pub fn with_fleet(mut self, fleet: Fleet) -> Self {
        self.inference = (fleet.balance == Balance::Inference).then(|| {
            Arc::new(inference::InferenceState::new(fleet.inference.clone().unwrap_or_default(), self.backends.len()))
        });
        self.lora = fleet.lora.clone().map(|s| Arc::new(lora::LoraState::new(s, self.backends.len())));
        self.fleet = fleet;
        self
    }

    pub fn with_default_model(mut self, model: Option<String>) -> Self {
        self.default_model = model;
        self
    }

    /// Joins the base path and the (already prefix-stripped) request path.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let mut out = String::with_capacity(self.base_path.len() + path_and_query.len());
        out.push_str(&self.base_path);
        if !path_and_query.starts_with('/') {
            out.push('/');
        }
        out.push_str(path_and_query);
        out
    }

    pub fn next_cursor(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }
}

/// [`clock::now_ms`] read on first use and kept: only a circuit that is not closed asks for
/// the time, so most requests choose a backend without reading the clock at all.
#[derive(Debug, Default)]
pub struct LazyNow(Cell<u64>);

impl LazyNow {
    pub fn get(&self) -> u64 {
        match self.0.get() {
            // now_ms() starts at 1: 0 means not read yet.
            0 => {
                let now = clock::now_ms();
                self.0.set(now);
                now
            }
            now => now,
        }
    }
}

impl Provider {
    /// Healthy (or not probed) and its circuit lets a request through.
    pub fn usable(&self, b: &Backend, now: u64) -> bool {
        b.health.is_up() && b.circuit.allows(&self.fleet.circuit, now)
    }

    /// [`Provider::usable`] with the clock read only if a circuit needs it.
    pub fn usable_at(&self, b: &Backend, now: &LazyNow) -> bool {
        b.health.is_up() && b.circuit.allows_at(&self.fleet.circuit, || now.get())
    }

    pub fn any_usable(&self, now: u64) -> bool {
        self.backends.iter().any(|b| self.usable(b, now))
    }

    /// [`Provider::any_usable`] with the clock read only if a circuit needs it.
    pub fn any_usable_at(&self, now: &LazyNow) -> bool {
        self.backends.iter().any(|b| self.usable_at(b, now))
    }

    /// Chooses a backend for `key`, skipping `tried`; `None` when nothing is left.
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Option<(usize, Arc<Backend>)> {
        self.pick_for(key, tried, None, None)
    }

    /// [`Provider::pick`] for a request that carries an inference ticket (scored, charged)
    /// and names a model (a LoRA adapter is routed by what the replicas serve and have hot).
    pub fn pick_for(
        &self,
        key: &[u8],
        tried: &[usize],
        ticket: Option<&inference::Ticket>,
        model: Option<&str>,
    ) -> Option<(usize, Arc<Backend>)> {
        self.pick_by(Pick { balance: self.fleet.balance, sessions: false, ticket, model }, key, tried)
    }

    /// Places the first request of a new MCP session or Responses chain: the healthy backend
    /// with the fewest open sessions plus requests in flight (relative to weight). Its later
    /// requests follow the sealed id, so no hash is needed to keep them together.
    pub fn place(&self, tried: &[usize]) -> Option<(usize, Arc<Backend>)> {
        self.pick_by(Pick { balance: Balance::LeastInflight, sessions: true, ticket: None, model: None }, &[], tried)
    }

    fn pick_by(&self, how: Pick<'_>, key: &[u8], tried: &[usize]) -> Option<(usize, Arc<Backend>)> {
        let now = &LazyNow::default();
        let adapter = self.adapter_plan(how.model);
        let serving = |i: usize| adapter.as_ref().is_none_or(|(_, plan)| plan.serving.get(i).copied().unwrap_or(false));
        if let Some(ticket) = how.ticket.filter(|_| how.balance == Balance::Inference) {
            let candidate = |i: usize| {
                !tried.contains(&i) && serving(i) && self.backends.get(i).is_some_and(|b| self.usable_at(b, now))
            };
            let i = match ticket.choose(candidate) {
                inference::score::Choice::Replica(i) | inference::score::Choice::Saturated(i) => i,
                inference::score::Choice::None => return None,
            };
            let picked = self.admit_backend(i, how, key, tried, now)?;
            ticket.charge(picked.0);
            self.note_adapter(adapter.as_ref(), picked.0);
            return Some(picked);
        }
        let slot = |b: &Arc<Backend>| Slot {
            usable: self.usable_at(b, now),
            inflight: b.inflight.load(Ordering::Relaxed)
                + if how.sessions { b.sessions.load(Ordering::Relaxed) } else { 0 },
            weight: b.weight,
        };
        // On the stack for the usual handful of backends.
        let mut few = [Slot { usable: false, inflight: 0, weight: 0 }; STACK_SLOTS];
        let many: Vec<Slot>;
        let slots: &[Slot] = if self.backends.len() <= STACK_SLOTS {
            for (s, b) in few.iter_mut().zip(&self.backends) {
                *s = slot(b);
            }
            &few[..self.backends.len()]
        } else {
            many = self.backends.iter().map(slot).collect();
            &many
        };
        let req = select::Request {
            balance: how.balance,
            ring: &self.ring,
            key,
            epsilon: self.fleet.epsilon,
            // Round robin's position; for the others it only breaks ties.
            cursor: self.next_cursor(),
            tried,
        };
        let i = match &adapter {
            Some((model, plan)) => lora::choose(plan, &self.ring, &lora::key(model), self.fleet.epsilon, tried, slots)?,
            None => select::choose(&req, slots)?,
        };
        let picked = self.admit_backend(i, how, key, tried, now)?;
        self.note_adapter(adapter.as_ref(), picked.0);
        Some(picked)
    }

    /// With `lora`, for a model some replica lists as an adapter: where it is served and hot.
    fn adapter_plan<'m>(&self, model: Option<&'m str>) -> Option<(&'m str, lora::Plan)> {
        let model = model?;
        Some((model, self.lora.as_ref()?.plan(model)?))
    }

    /// The adapter is hot where it was just sent (until that replica's next metrics).
    fn note_adapter(&self, adapter: Option<&(&str, lora::Plan)>, i: usize) {
        if let (Some(state), Some((model, _))) = (&self.lora, adapter) {
            state.note_sent(i, model);
        }
    }

    /// Passes backend `i` through its circuit (choosing again without it if its half-open
    /// trial was just taken) and counts the selection.
    fn admit_backend(
        &self,
        i: usize,
        how: Pick<'_>,
        key: &[u8],
        tried: &[usize],
        now: &LazyNow,
    ) -> Option<(usize, Arc<Backend>)> {
        let b = self.backends.get(i)?.clone();
        match b.circuit.acquire_at(&self.fleet.circuit, || now.get()) {
            circuit::Admission::Admitted | circuit::Admission::Trial { half_opened: false } => {}
            circuit::Admission::Trial { half_opened: true } => self.circuit_changed(&b, CircuitState::HalfOpen),
            // Another request took the half-open trial between the look and the choice: choose
            // again without this backend.
            circuit::Admission::Refused => {
                let mut skip = tried.to_vec();
                skip.push(i);
                return self.pick_by(how, key, &skip);
            }
        }
        if let Some(c) = b.metrics.selections(&self.name, b.addr) {
            c.inc();
        }
        Some((i, b))
    }

    /// A connect failure, timeout or 5xx from `b`.
    pub fn record_failure(&self, b: &Backend) {
        if let Some(state) = b.circuit.record_failure(&self.fleet.circuit, clock::now_ms()) {
            self.circuit_changed(b, state);
        }
    }

    pub fn record_success(&self, b: &Backend) {
        if let Some(state) = b.circuit.record_success() {
            self.circuit_changed(b, state);
        }
    }

    fn circuit_changed(&self, b: &Backend, state: CircuitState) {
        log::warn!("provider {} backend {}: circuit {}", self.name, b.addr, state.as_str());
        if let Some(m) = metrics() {
            m.fleet.circuit_transitions.with_label_values(&[&*self.name, &b.addr.to_string(), state.as_str()]).inc();
        }
    }
}
