//! `providers[].lora` as written, and its validation into
//! [`crate::fleet::lora::LoraSettings`] (defaults there).

use super::units::HumanDuration;
use super::ConfigError;
use crate::fleet::lora::LoraSettings;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Time between two rounds of learning (model list and metrics of every backend). Default 5s.
    pub refresh: Option<HumanDuration>,
}

/// `path` is the provider's YAML path.
pub fn settings(path: &str, section: Option<&LoraSection>, errors: &mut Vec<ConfigError>) -> Option<LoraSettings> {
    let s = section?;
    let d = LoraSettings::default();
    let refresh = s.refresh.map(|r| r.0).unwrap_or(d.refresh);
    if refresh < std::time::Duration::from_millis(100) {
        errors.push(ConfigError::new(format!("{path}.lora.refresh"), "must be at least 100ms"));
    }
    Some(LoraSettings { refresh })
}
