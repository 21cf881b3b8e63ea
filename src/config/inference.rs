//! `providers[].inference` as written, and its validation into
//! [`crate::fleet::inference::InferenceSettings`] (defaults there).

use super::units::HumanDuration;
use super::ConfigError;
use crate::fleet::inference::InferenceSettings;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSection {
    pub scrape: Option<ScrapeSection>,
    pub weights: Option<WeightsSection>,
    pub saturated: Option<SaturatedSection>,
    pub queue: Option<QueueSection>,
    /// Each replica's batch (vLLM's `--max-num-seqs`), for the seat-wait prediction. Default:
    /// learned from the scrapes and the relayed answers.
    pub max_seqs: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeSection {
    /// Path of each backend's Prometheus metrics. Default `/metrics`.
    pub path: Option<String>,
    /// Time between two scrapes of the provider's backends. Default 500ms.
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSection {
    pub prefix: Option<f64>,
    pub queue: Option<f64>,
    pub kv_cache: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaturatedSection {
    pub waiting: Option<f64>,
    pub kv_cache: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub max: Option<usize>,
    pub timeout: Option<HumanDuration>,
}

/// `path` is the provider's YAML path; `inference_balance` whether `balance: inference`.
pub fn settings(
    path: &str,
    section: Option<&InferenceSection>,
    inference_balance: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<InferenceSettings> {
    let Some(s) = section else { return inference_balance.then(InferenceSettings::default) };
    if !inference_balance {
        errors.push(ConfigError::new(format!("{path}.inference"), "is only used with balance: inference"));
        return None;
    }
    let mut out = InferenceSettings::default();
    let mut check = |field: &str, v: Option<f64>, max: f64, into: &mut f64| {
        if let Some(v) = v {
            if v.is_finite() && (0.0..=max).contains(&v) {
                *into = v;
            } else {
                errors.push(ConfigError::new(format!("{path}.inference.{field}"), format!("must be within 0..{max}")));
            }
        }
    };
    if let Some(w) = &s.weights {
        check("weights.prefix", w.prefix, 1000.0, &mut out.weights.prefix);
        check("weights.queue", w.queue, 1000.0, &mut out.weights.queue);
        check("weights.kv_cache", w.kv_cache, 1000.0, &mut out.weights.kv_cache);
    }
    if let Some(sat) = &s.saturated {
        check("saturated.waiting", sat.waiting, 1e9, &mut out.saturated.waiting);
        check("saturated.kv_cache", sat.kv_cache, 1.0, &mut out.saturated.kv_cache);
    }
    if let Some(sc) = &s.scrape {
        if let Some(p) = &sc.path {
            if !p.starts_with('/') {
                errors.push(ConfigError::new(format!("{path}.inference.scrape.path"), "must start with \"/\""));
            }
            out.scrape_path = p.clone();
        }
        if let Some(i) = sc.interval {
            if i.0 < std::time::Duration::from_millis(10) {
                errors.push(ConfigError::new(format!("{path}.inference.scrape.interval"), "must be at least 10ms"));
            }
            out.scrape_interval = i.0;
        }
    }
    if let Some(n) = s.max_seqs {
        if n == 0 {
            errors.push(ConfigError::new(format!("{path}.inference.max_seqs"), "must be at least 1"));
        }
        out.max_seqs = n;
    }
    if let Some(q) = &s.queue {
        out.queue_max = q.max.unwrap_or(out.queue_max);
        let at = format!("{path}.inference.queue.timeout");
        out.queue_timeout = super::units::positive(&at, q.timeout, out.queue_timeout, errors);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(yaml: &str, balance: bool) -> (Option<InferenceSettings>, Vec<String>) {
        let section: InferenceSection = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let out = settings("providers[0]", Some(&section), balance, &mut errors);
        (out, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn fields_override_defaults_and_bad_values_name_their_path() {
        let (s, e) = parse("{scrape: {interval: 200ms}, weights: {prefix: 5}, queue: {max: 3, timeout: 2s}}", true);
        assert!(e.is_empty(), "{e:?}");
        let s = s.unwrap();
        assert_eq!(s.scrape_interval, std::time::Duration::from_millis(200));
        assert_eq!((s.weights.prefix, s.weights.queue), (5.0, 2.0));
        assert_eq!(s.queue_max, 3);
        let (_, e) = parse("{saturated: {kv_cache: 1.5}, scrape: {path: metrics}}", true);
        assert!(e.iter().any(|e| e.contains("providers[0].inference.saturated.kv_cache")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("providers[0].inference.scrape.path")), "{e:?}");
        let (_, e) = parse("{}", false);
        assert!(e.iter().any(|e| e.contains("balance: inference")), "{e:?}");
        assert!(serde_yaml::from_str::<InferenceSection>("{weights: {prefx: 1}}").is_err());
    }

    #[test]
    fn max_seqs_is_a_positive_batch() {
        let (s, e) = parse("{max_seqs: 16}", true);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.unwrap().max_seqs, 16);
        let (_, e) = parse("{max_seqs: 0}", true);
        assert!(e.iter().any(|e| e.contains("providers[0].inference.max_seqs")), "{e:?}");
        assert_eq!(parse("{}", true).0.unwrap().max_seqs, 0, "learned by default");
    }
}
