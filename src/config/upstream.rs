//! Validation of a provider's upstream fleet settings (balance, hash key, bounded load, health checks,
//! circuit breaker, retries, fallbacks) into [`Fleet`].

use super::schema::{BalanceSection, EpsilonSection, ProviderSection};
use super::ConfigError;
use crate::fleet::circuit::CircuitSettings;
use crate::fleet::hash_key::HashSource;
use crate::fleet::health::HealthSettings;
use crate::fleet::select::Balance;
use crate::fleet::{Fleet, Provider};
use std::sync::Arc;

/// `path` is the provider's YAML path (`providers[i]`).
pub fn fleet(path: &str, p: &ProviderSection, errors: &mut Vec<ConfigError>) -> Fleet {
    let d = Fleet::default();
    let balance = match p.balance {
        None | Some(BalanceSection::Ketama) => Balance::Ketama,
        Some(BalanceSection::RoundRobin) => Balance::RoundRobin,
        Some(BalanceSection::LeastInflight) => Balance::LeastInflight,
        Some(BalanceSection::Inference) => Balance::Inference,
    };
    let inference = super::inference::settings(path, p.inference.as_ref(), balance == Balance::Inference, errors);
    let hash_key = match &p.hash_key {
        None => d.hash_key,
        Some(list) if list.is_empty() => {
            errors.push(ConfigError::new(format!("{path}.hash_key"), "is empty (omit it for the default)"));
            vec![]
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                HashSource::parse(s).map_err(|m| errors.push(ConfigError::new(format!("{path}.hash_key[{i}]"), m))).ok()
            })
            .collect(),
    };
    let epsilon = match &p.epsilon {
        None => d.epsilon,
        Some(EpsilonSection::Value(e)) if e.is_finite() && *e >= 0.0 => Some(*e),
        Some(EpsilonSection::Word(w)) if w == "off" => None,
        Some(_) => {
            errors.push(ConfigError::new(format!("{path}.epsilon"), "must be a number ≥ 0 (e.g. 0.25) or off"));
            None
        }
    };
    let health_on = match &p.health {
        Some(h) => h.enabled.unwrap_or(true),
        None => p.backends.is_some() || p.discover.is_some(),
    };
    let health = health_on.then(|| {
        let hd = HealthSettings::default();
        let h = p.health.as_ref();
        let s = HealthSettings {
            path: h.and_then(|h| h.path.clone()).unwrap_or(hd.path),
            interval: h.and_then(|h| h.interval).map(|x| x.0).unwrap_or(hd.interval),
            timeout: h.and_then(|h| h.timeout).map(|x| x.0).unwrap_or(hd.timeout),
            unhealthy_after: h.and_then(|h| h.unhealthy_after).unwrap_or(hd.unhealthy_after),
            healthy_after: h.and_then(|h| h.healthy_after).unwrap_or(hd.healthy_after),
        };
        if !s.path.starts_with('/') {
            errors.push(ConfigError::new(format!("{path}.health.path"), "must start with \"/\""));
        }
        for (field, zero) in [
            ("interval", s.interval.is_zero()),
            ("timeout", s.timeout.is_zero()),
            ("unhealthy_after", s.unhealthy_after == 0),
            ("healthy_after", s.healthy_after == 0),
        ] {
            if zero {
                errors.push(ConfigError::new(format!("{path}.health.{field}"), "must be more than 0"));
            }
        }
        s
    });
    let cd = CircuitSettings::default();
    let c = p.circuit.as_ref();
    let circuit = CircuitSettings {
        failures: c.and_then(|c| c.failures).unwrap_or(cd.failures),
        window: c.and_then(|c| c.window).map(|x| x.0).unwrap_or(cd.window),
        cooldown: c.and_then(|c| c.cooldown).map(|x| x.0).unwrap_or(cd.cooldown),
    };
    for (field, zero) in [
        ("failures", circuit.failures == 0),
        ("window", circuit.window.is_zero()),
        ("cooldown", circuit.cooldown.is_zero()),
    ] {
        if zero {
            errors.push(ConfigError::new(format!("{path}.circuit.{field}"), "must be more than 0"));
        }
    }
    Fleet {
        balance,
        hash_key,
        epsilon,
        health,
        circuit,
        retries: p.retries.unwrap_or(d.retries),
        fallbacks: p.fallbacks.clone().unwrap_or_default(),
        discover: None,
        pool: None,
        inference,
        lora: super::lora::settings(path, p.lora.as_ref(), errors),
    }
}

/// Fallbacks must name other providers; backends of one provider must differ.
pub fn cross_check(providers: &[Arc<Provider>], errors: &mut Vec<ConfigError>) {
    for (i, p) in providers.iter().enumerate() {
        for (j, f) in p.fleet.fallbacks.iter().enumerate() {
            let fpath = format!("providers[{i}].fallbacks[{j}]");
            if **f == *p.name {
                errors.push(ConfigError::new(fpath, "a provider cannot fall back to itself"));
            } else if !providers.iter().any(|o| *o.name == **f) {
                errors.push(ConfigError::new(fpath, format!("no provider is named {f:?}")));
            }
        }
        for (j, b) in p.backends.iter().enumerate() {
            if p.backends[..j].iter().any(|o| o.addr == b.addr) {
                errors.push(ConfigError::new(
                    format!("providers[{i}].backends[{j}]"),
                    format!("{} is listed twice", b.addr),
                ));
            }
        }
    }
}
