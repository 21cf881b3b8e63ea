//! LoRA adapters as vLLM serves them: `--lora a,b,c` adapters on top of the first base model,
//! listed in `/v1/models` with `parent`; at most `--max-loras` loaded at once (least recently
//! used one evicted, never one with requests running); loading one costs `--lora-load-ms`
//! before the request's first token. `/metrics` reports vLLM's
//! `vllm:lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters}` and the
//! sim's own `mcas_sim_lora_loads_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Loaded adapters, least recently used first, with when each is ready.
    loaded: VecDeque<(String, Instant)>,
    running: HashMap<String, usize>,
    waiting: HashMap<String, usize>,
}

pub struct Lora {
    adapters: Vec<String>,
    max: usize,
    load: Duration,
    state: Arc<Mutex<State>>,
    loads: AtomicU64,
}

/// A request running on an adapter, until dropped.
pub struct Running(Arc<Mutex<State>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            bump(&mut s.running, &self.1, -1);
        }
    }
}

fn bump(map: &mut HashMap<String, usize>, key: &str, by: isize) {
    let n = map.entry(key.to_string()).or_insert(0);
    *n = n.saturating_add_signed(by);
    if *n == 0 {
        map.remove(key);
    }
}

impl Lora {
    pub fn new(adapters: Vec<String>, max: usize, load: Duration) -> Self {
        Lora { adapters, max: max.max(1), load, state: Default::default(), loads: AtomicU64::new(0) }
    }

    pub fn serves(&self, model: &str) -> bool {
        self.adapters.iter().any(|a| a == model)
    }

    /// Waits until `model`'s adapter is loaded (loading it, evicting an idle one, or waiting
    /// for one to become idle); `None` for a base model.
    pub async fn acquire(&self, model: &str) -> Option<Running> {
        if !self.serves(model) {
            return None;
        }
        let mut counted_waiting = false;
        loop {
            let ready = {
                let mut s = self.state.lock().ok()?;
                let ready = self.place(&mut s, model);
                match ready {
                    Some(_) => {
                        if counted_waiting {
                            bump(&mut s.waiting, model, -1);
                        }
                        bump(&mut s.running, model, 1);
                    }
                    None if !counted_waiting => {
                        bump(&mut s.waiting, model, 1);
                        counted_waiting = true;
                    }
                    None => {}
                }
                ready
            };
            match ready {
                Some(at) => {
                    let now = Instant::now();
                    if at > now {
                        tokio::time::sleep(at - now).await;
                    }
                    return Some(Running(self.state.clone(), model.to_string()));
                }
                // Every slot holds an adapter with requests running: wait for one to finish.
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// When `model` is (or will be) ready, loading it if a slot is free or idle.
    fn place(&self, s: &mut State, model: &str) -> Option<Instant> {
        if let Some(i) = s.loaded.iter().position(|(a, _)| a == model) {
            let entry = s.loaded.remove(i)?;
            let ready = entry.1;
            s.loaded.push_back(entry);
            return Some(ready);
        }
        if s.loaded.len() >= self.max {
            let idle = s.loaded.iter().position(|(a, _)| !s.running.contains_key(a))?;
            s.loaded.remove(idle);
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let ready = Instant::now() + self.load;
        s.loaded.push_back((model.to_string(), ready));
        Some(ready)
    }

    /// `/v1/models` entries of the adapters.
    pub fn model_entries(&self, parent: &str, created: u64) -> Vec<serde_json::Value> {
        self.adapters
            .iter()
            .map(|a| {
                serde_json::json!({"id": a, "object": "model", "created": created, "owned_by": "vllm",
                    "root": format!("/adapters/{a}"), "parent": parent})
            })
            .collect()
    }

    /// The LoRA lines of `/metrics` (vLLM reports the info gauge with the time as its value).
    pub fn render(&self) -> String {
        if self.adapters.is_empty() {
            return String::new();
        }
        let (running, waiting) = match self.state.lock() {
            Ok(s) => (names(&s.running), names(&s.waiting)),
            Err(_) => (String::new(), String::new()),
        };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        format!(
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{running}\",waiting_lora_adapters=\"{waiting}\"}} {now}\n\
             # HELP mcas_sim_lora_loads_total Adapter loads (each costs --lora-load-ms).\n# TYPE mcas_sim_lora_loads_total counter\n\
             mcas_sim_lora_loads_total {}\n",
            self.max,
            self.loads.load(Ordering::Relaxed)
        )
    }
}

/// The `/v1/models` body with the adapters appended (parent: the first base model).
pub fn with_adapters(body: Vec<u8>, cfg: &super::config::SimConfig) -> Vec<u8> {
    if cfg.lora.is_empty() {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
    let parent = cfg.models.first().cloned().unwrap_or_default();
    let extra = Lora::new(cfg.lora.clone(), 1, Duration::ZERO).model_entries(&parent, 0);
    if let Some(data) = v.get_mut("data").and_then(|d| d.as_array_mut()) {
        data.extend(extra);
    }
    v.to_string().into_bytes()
}

fn names(map: &HashMap<String, usize>) -> String {
    let mut v: Vec<&str> = map.keys().map(String::as_str).collect();
    v.sort_unstable();
    v.join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_evict_the_least_recently_used_idle_adapter() {
        let l = Lora::new(vec!["a".into(), "b".into(), "c".into()], 2, Duration::ZERO);
        assert!(l.acquire("base").await.is_none());
        drop(l.acquire("a").await.unwrap());
        drop(l.acquire("b").await.unwrap());
        drop(l.acquire("a").await.unwrap()); // loaded: a is now the most recent
        assert_eq!(l.loads.load(Ordering::Relaxed), 2);
        let running_c = l.acquire("c").await.unwrap(); // evicts b
        assert!(l.render().contains("running_lora_adapters=\"c\""), "{}", l.render());
        drop(l.acquire("a").await.unwrap());
        assert_eq!(l.loads.load(Ordering::Relaxed), 3);
        drop(running_c);
        drop(l.acquire("b").await.unwrap());
        assert_eq!(l.loads.load(Ordering::Relaxed), 4);
    }
}
