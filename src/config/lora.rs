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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn off_unless_set_and_refresh_checked() {
        let mut errors = Vec::new();
        assert_eq!(settings("providers[0]", None, &mut errors), None);
        let s = settings("providers[0]", Some(&LoraSection::default()), &mut errors).unwrap();
        assert_eq!(s.refresh, Duration::from_secs(5));
        assert!(errors.is_empty());
        let fast = LoraSection { refresh: Some(HumanDuration(Duration::from_millis(10))) };
        settings("providers[0]", Some(&fast), &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(format!("{:?}", errors[0]).contains("providers[0].lora.refresh"), "{errors:?}");
        assert!(serde_yaml::from_str::<LoraSection>("refresh: 1s\nmax: 2\n").is_err(), "unknown field");
    }
}
