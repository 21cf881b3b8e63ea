//! Metric children bound to what the config names (a route and provider pair, a provider, a
//! backend), so the request path records through a held handle instead of looking a child up
//! by label strings on every request. Each child is bound on first use (a series appears on
//! `/metrics` only once something was recorded in it, as with label lookups) and then read
//! with one atomic load. The handles live on the compiled runtime and are rebuilt with it on a
//! reload; the registry hands the same child back for the same labels, so counts carry over.

use super::metrics::{metrics, status_class};
use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use std::sync::{Arc, Mutex, OnceLock};

/// Status classes in the order of [`class_index`].
const CLASSES: usize = 6;

fn class_index(status: u16) -> usize {
    match status {
        0 => 0,
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        _ => 5,
    }
}

/// `mcas_requests_total`, `mcas_request_duration_seconds` and `mcas_client_cancels_total` of
/// one route pattern and one provider.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    provider: Arc<str>,
    requests: [OnceLock<IntCounter>; CLASSES],
    duration: OnceLock<Histogram>,
    cancels: OnceLock<IntCounter>,
}

impl RouteMetrics {
    pub fn new(route: Arc<str>, provider: Arc<str>) -> Self {
        RouteMetrics {
            route,
            provider,
            requests: Default::default(),
            duration: OnceLock::new(),
            cancels: OnceLock::new(),
        }
    }

    pub fn requests(&self, status: u16) -> Option<&IntCounter> {
        let m = metrics()?;
        let cell = self.requests.get(class_index(status))?;
        Some(cell.get_or_init(|| m.requests.with_label_values(&[&*self.route, &*self.provider, status_class(status)])))
    }

    pub fn duration(&self) -> Option<&Histogram> {
        let m = metrics()?;
        Some(self.duration.get_or_init(|| m.duration.with_label_values(&[&*self.route, &*self.provider])))
    }

    pub fn cancels(&self) -> Option<&IntCounter> {
        let m = metrics()?;
        Some(self.cancels.get_or_init(|| m.client_cancels.with_label_values(&[&*self.route])))
    }
}

/// The per-provider upstream series: time to the answer header, connect failures, retries.
#[derive(Debug)]
pub struct ProviderMetrics {
    provider: Arc<str>,
    ttfb: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    connect_errors: OnceLock<IntCounter>,
    retries: OnceLock<IntCounter>,
}

impl ProviderMetrics {
    pub fn new(provider: Arc<str>) -> Self {
        ProviderMetrics {
            provider,
            ttfb: OnceLock::new(),
            ttft: OnceLock::new(),
            connect_errors: OnceLock::new(),
            retries: OnceLock::new(),
        }
    }

    pub fn ttfb(&self) -> Option<&Histogram> {
        let m = metrics()?;
        Some(self.ttfb.get_or_init(|| m.upstream_ttfb.with_label_values(&[&*self.provider])))
    }

    /// `mcas_ttft_seconds`.
    pub fn ttft(&self) -> Option<&Histogram> {
        let m = metrics()?;
        Some(self.ttft.get_or_init(|| m.ttft.with_label_values(&[&*self.provider])))
    }

    /// `mcas_upstream_errors_total{kind="connect"}`.
    pub fn connect_errors(&self) -> Option<&IntCounter> {
        let m = metrics()?;
        Some(self.connect_errors.get_or_init(|| m.upstream_errors.with_label_values(&[&*self.provider, "connect"])))
    }

    pub fn retries(&self) -> Option<&IntCounter> {
        let m = metrics()?;
        Some(self.retries.get_or_init(|| m.fleet.retries.with_label_values(&[&*self.provider])))
    }
}

/// `mcas_backend_selections_total` of one backend.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    selections: OnceLock<IntCounter>,
}

impl BackendMetrics {
    pub fn selections(&self, provider: &str, addr: std::net::SocketAddr) -> Option<&IntCounter> {
        let m = metrics()?;
        Some(
            self.selections
                .get_or_init(|| m.fleet.backend_selections.with_label_values(&[provider, &addr.to_string()])),
        )
    }
}

/// `mcas_key_requests_total` and `mcas_tokens_total` of one key. The token series of each model
/// the key was charged under is bound on its first answer, within the global cap on (key, model)
/// pairs ([`super::metrics::Metrics::model_label`]); a model over the cap counts under `other`
/// and is not held here, so what a key holds stays within that cap.
#[derive(Debug)]
pub struct KeyMetrics {
    key: Arc<str>,
    requests: OnceLock<IntCounter>,
    /// Read without a lock on every answer; replaced whole (under `adding`) when a model is new.
    tokens: ArcSwap<Vec<ModelTokens>>,
    adding: Mutex<()>,
}

#[derive(Debug, Clone)]
struct ModelTokens {
    model: Box<str>,
    prompt: IntCounter,
    completion: IntCounter,
}

impl KeyMetrics {
    pub fn new(key: Arc<str>) -> Self {
        KeyMetrics { key, requests: OnceLock::new(), tokens: ArcSwap::default(), adding: Mutex::new(()) }
    }

    pub fn requests(&self) -> Option<&IntCounter> {
        let m = metrics()?;
        Some(self.requests.get_or_init(|| m.key_requests.with_label_values(&[&*self.key])))
    }

    /// Counts an answer's prompt and completion tokens under `model` (at most `cap` distinct
    /// (key, model) pairs across keys; `admin.max_key_model_pairs`).
    pub fn tokens(&self, model: &str, cap: usize, prompt: u64, completion: u64) {
        let Some(m) = metrics() else { return };
        if let Some(t) = self.tokens.load().iter().find(|t| &*t.model == model) {
            t.prompt.inc_by(prompt);
            t.completion.inc_by(completion);
            return;
        }
        let label = m.model_label(&self.key, model, cap);
        let t = ModelTokens {
            model: model.into(),
            prompt: m.tokens.with_label_values(&[&*self.key, label, "prompt"]),
            completion: m.tokens.with_label_values(&[&*self.key, label, "completion"]),
        };
        t.prompt.inc_by(prompt);
        t.completion.inc_by(completion);
        if label == model {
            let _one_writer = self.adding.lock().unwrap_or_else(|p| p.into_inner());
            let held = self.tokens.load();
            if !held.iter().any(|h| &*h.model == model) {
                let mut more = Vec::with_capacity(held.len() + 1);
                more.extend(held.iter().cloned());
                more.push(t);
                self.tokens.store(Arc::new(more));
            }
        }
    }
}

/// Every (route, provider) pair and every provider of one compiled runtime, by index.
#[derive(Debug, Default)]
pub struct BoundMetrics {
    /// `admin.max_key_model_pairs`.
    pub max_key_model_pairs: usize,
    providers: Vec<ProviderMetrics>,
    /// `routes × providers`, row by route.
    pairs: Vec<RouteMetrics>,
}

impl BoundMetrics {
    pub fn new(routes: &[&str], providers: &[Arc<str>], max_key_model_pairs: usize) -> Self {
        let pairs = routes
            .iter()
            .flat_map(|r| {
                let r: Arc<str> = Arc::from(*r);
                providers.iter().map(move |p| RouteMetrics::new(r.clone(), p.clone()))
            })
            .collect();
        BoundMetrics {
            max_key_model_pairs,
            providers: providers.iter().map(|p| ProviderMetrics::new(p.clone())).collect(),
            pairs,
        }
    }

    pub fn pair(&self, route: usize, provider: usize) -> Option<&RouteMetrics> {
        if provider >= self.providers.len() {
            return None;
        }
        self.pairs.get(route.checked_mul(self.providers.len())?.checked_add(provider)?)
    }

    pub fn provider(&self, provider: usize) -> Option<&ProviderMetrics> {
        self.providers.get(provider)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bound_children_are_the_labelled_series() {
        let p: Vec<Arc<str>> = vec!["bound-p0".into(), "bound-p1".into()];
        let b = BoundMetrics::new(&["/bound-a/*", "/bound-b"], &p, 1);
        let m = metrics().unwrap();
        b.pair(1, 0).unwrap().requests(204).unwrap().inc();
        b.pair(1, 0).unwrap().requests(200).unwrap().inc();
        assert_eq!(m.requests.with_label_values(&["/bound-b", "bound-p0", "2xx"]).get(), 2);
        b.pair(0, 1).unwrap().duration().unwrap().observe(0.5);
        assert_eq!(m.duration.with_label_values(&["/bound-a/*", "bound-p1"]).get_sample_count(), 1);
        b.provider(1).unwrap().connect_errors().unwrap().inc();
        assert_eq!(m.upstream_errors.with_label_values(&["bound-p1", "connect"]).get(), 1);
        assert!(b.pair(2, 0).is_none() && b.pair(0, 2).is_none() && b.provider(2).is_none());
        // A reload binds again and finds the same series.
        let again = BoundMetrics::new(&["/bound-b"], &p[..1], 1);
        again.pair(0, 0).unwrap().requests(201).unwrap().inc();
        assert_eq!(m.requests.with_label_values(&["/bound-b", "bound-p0", "2xx"]).get(), 3);
    }
    #[test]
    fn key_children_are_the_labelled_series_and_stay_within_the_cap() {
        let m = metrics().unwrap();
        let k = KeyMetrics::new("bound-key".into());
        k.requests().unwrap().inc();
        k.requests().unwrap().inc();
        assert_eq!(m.key_requests.with_label_values(&["bound-key"]).get(), 2);
        k.tokens("bound-model-a", usize::MAX, 3, 5);
        k.tokens("bound-model-a", usize::MAX, 1, 1);
        let series = |model: &str, kind: &str| m.tokens.with_label_values(&["bound-key", model, kind]).get();
        assert_eq!((series("bound-model-a", "prompt"), series("bound-model-a", "completion")), (4, 6));
        // Cap 0: a new pair counts under `other` and is not held, however often it comes.
        let before = series("other", "prompt");
        k.tokens("bound-model-b", 0, 7, 0);
        k.tokens("bound-model-b", 0, 7, 0);
        assert_eq!(series("other", "prompt") - before, 14);
        assert_eq!(k.tokens.load().len(), 1);
        // A reload binds again and finds the same series.
        let again = KeyMetrics::new("bound-key".into());
        again.tokens("bound-model-a", 0, 1, 0);
        assert_eq!(series("bound-model-a", "prompt"), 5, "a pair already labelled keeps its name");
    }
}
