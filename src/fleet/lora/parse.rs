//! Reading what a replica says about its adapters: the OpenAI model list (`/v1/models`,
//! adapters are the entries with `parent` set, as vLLM lists them) and vLLM's
//! `vllm:lora_requests_info` gauge in Prometheus text. Input is already bounded by the fetch
//! (`fleet/inference/scrape.rs`); these also bound what they keep.

use crate::fleet::prom_text::{label_pairs, number, samples};
use std::collections::HashSet;

/// Most adapters kept from one answer (a replica listing more is read up to this many).
pub const MAX_ADAPTERS: usize = 4096;
/// Longest adapter name kept (longer ones are skipped).
pub const MAX_NAME: usize = 256;

/// The adapters of a model list: ids of `data[]` entries whose `parent` is a non-empty
/// string. Anything but a JSON object with a `data` array fails.
pub fn adapters(body: &str) -> Result<HashSet<String>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| "model list is not JSON".to_string())?;
    let data = v.get("data").and_then(|d| d.as_array()).ok_or("model list has no data array")?;
    Ok(data
        .iter()
        .filter(|m| m.get("parent").and_then(|p| p.as_str()).is_some_and(|p| !p.is_empty()))
        .filter_map(|m| m.get("id").and_then(|id| id.as_str()))
        .filter(|id| !id.is_empty() && id.len() <= MAX_NAME)
        .take(MAX_ADAPTERS)
        .map(str::to_string)
        .collect())
}

/// What `vllm:lora_requests_info` says.
#[derive(Debug, Default, PartialEq)]
pub struct LoraInfo {
    /// Running and waiting adapters.
    pub hot: HashSet<String>,
    /// `max_lora`: adapters it holds at once.
    pub max: Option<usize>,
}

/// The newest `vllm:lora_requests_info` series (vLLM keeps one series per label set, valued
/// with the time it was set). No such series fails.
pub fn lora_info(text: &str) -> Result<LoraInfo, String> {
    let mut newest: Option<(f64, &str)> = None;
    for sample in samples(text).filter(|s| s.name == "vllm:lora_requests_info") {
        let (labels, value) = sample.split().map_err(|why| format!("vllm:lora_requests_info: {why}"))?;
        let value = number(value).ok_or("vllm:lora_requests_info: not a number")?;
        if newest.is_none_or(|(t, _)| value >= t) {
            newest = Some((value, labels));
        }
    }
    let (_, labels) = newest.ok_or("no vllm:lora_requests_info")?;
    let mut out = LoraInfo::default();
    for (name, value) in label_pairs(labels)? {
        if name == "max_lora" {
            out.max = value.trim().parse().ok();
        } else if name == "running_lora_adapters" || name == "waiting_lora_adapters" {
            out.hot.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty() && a.len() <= MAX_NAME)
                    .take(MAX_ADAPTERS)
                    .map(str::to_string),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(s: &HashSet<String>) -> Vec<&str> {
        let mut v: Vec<&str> = s.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn model_list_adapters_have_a_parent() {
        let body = r#"{"object":"list","data":[
            {"id":"base","object":"model","parent":null,"root":"base"},
            {"id":"sql","object":"model","parent":"base","root":"/adapters/sql"},
            {"id":"chat","object":"model","parent":"base"},
            {"id":"odd","parent":""}]}"#;
        assert_eq!(names(&adapters(body).unwrap()), vec!["chat", "sql"]);
        assert!(adapters("<html>").is_err());
        assert!(adapters("{\"data\":3}").is_err());
        assert!(adapters("{\"data\":[]}").unwrap().is_empty());
    }

    #[test]
    fn newest_lora_series_running_and_waiting() {
        let text = "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 1.7e9\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"b,c\",waiting_lora_adapters=\"d\"} 1.8e9\n\
            vllm:num_requests_waiting 0\n";
        let info = lora_info(text).unwrap();
        assert_eq!((names(&info.hot), info.max), (vec!["b", "c", "d"], Some(2)));
        let quoted = "vllm:lora_requests_info{running_lora_adapters=\"x}\\\"y\",waiting_lora_adapters=\"\"} 1\n";
        assert_eq!(names(&lora_info(quoted).unwrap().hot), vec!["x}\"y"]);
        assert!(lora_info("vllm:num_requests_waiting 1\n").is_err(), "no series");
        assert!(lora_info("vllm:lora_requests_info{running_lora_adapters=\"a\" 1\n").is_err());
        assert!(lora_info("vllm:lora_requests_info{running_lora_adapters=\"a\"} zz\n").is_err());
        assert!(lora_info("<html>vllm:lora_requests_info</html>").is_err());
    }
}
