//! Settings of one simulated replica, and the `mcas-sim` command line that fills them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything one replica needs. `Default` is what `mcas-sim` runs with when given no flags.
#[derive(Clone)]
pub struct SimConfig {
    /// Where the binary binds (`--listen`, default 127.0.0.1:8000). [`super::serve`] ignores
    /// it: the caller binds the listener.
    pub listen: SocketAddr,
    /// Name sent in `x-mcas-replica` (`--replica-id`); `None` means `sim-<listener port>`.
    pub replica_id: Option<String>,
    /// Model ids served (`--models a,b`, default `sim-model`); the first one answers requests
    /// that name no model.
    pub models: Vec<String>,
    /// Completion tokens generated per request (`--tokens`, default 16), capped by the
    /// request's `max_tokens` / `max_completion_tokens`.
    pub tokens: u32,
    /// Time to first token (`--ttft-ms`, default 0).
    pub ttft: Duration,
    /// Delay between two tokens (`--itl-ms`, default 0).
    pub itl: Duration,
    /// If set, OpenAI endpoints and any path containing `/v1/` need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// `/health` needs the key too (`--health-requires-key`, default false).
    pub health_requires_key: bool,
    /// Fraction (0..=1) of completion requests answered 500 (`--error-rate`, default 0).
    pub error_rate: f64,
    /// Fraction (0..=1) of completion requests whose connection is cut half way through the
    /// body (`--close-rate`, default 0).
    pub close_rate: f64,
    /// Fraction (0..=1) of completion requests never answered (`--hang-rate`, default 0).
    pub hang_rate: f64,
    /// Capacity of the prefix cache in blocks (`--prefix-cache-blocks`, default 4096; 0 = off).
    pub prefix_cache_blocks: usize,
    /// Prompt bytes per cache block (`--block-chars`, default 64; chars for ASCII prompts).
    pub block_chars: usize,
    /// Tokio worker threads of the binary (`--threads`, default 1; 1 = current-thread runtime).
    pub threads: usize,
    /// Gzip every answer whatever the request's `Accept-Encoding` says (`--force-gzip`): a
    /// misbehaving upstream, for testing that compression cannot dodge accounting.
    pub force_gzip: bool,
    /// Line ending of streamed answers (`--line-ending lf|crlf|cr`, default lf): SSE allows
    /// all three, and clients (the gateway too) must read each.
    pub line_ending: LineEnding,
    /// LoRA adapters served on top of the first model (`--lora`, see `lora.rs`).
    pub lora: Vec<String>,
    /// Adapters loaded at once (`--max-loras`, default 1 as in vLLM).
    pub max_loras: usize,
    /// Cost of loading an adapter (`--lora-load-ms`, default 0).
    pub lora_load: Duration,
    /// The replica model (`--max-seqs` and the flags beside it; off by default).
    pub engine: super::engine::EngineSettings,
}

/// How the SSE lines of a streamed answer end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEnding {
    #[default]
    Lf,
    CrLf,
    Cr,
}

impl LineEnding {
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
            LineEnding::Cr => "\r",
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            replica_id: None,
            models: vec!["sim-model".to_string()],
            tokens: 16,
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            api_key: None,
            health_requires_key: false,
            error_rate: 0.0,
            close_rate: 0.0,
            hang_rate: 0.0,
            prefix_cache_blocks: 4096,
            block_chars: 64,
            threads: 1,
            force_gzip: false,
            line_ending: LineEnding::Lf,
            lora: Vec::new(),
            max_loras: 1,
            lora_load: Duration::ZERO,
            engine: Default::default(),
        }
    }
}

/// Hand-written so the API key never reaches a log.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("replica_id", &self.replica_id)
            .field("models", &self.models)
            .field("tokens", &self.tokens)
            .field("ttft", &self.ttft)
            .field("itl", &self.itl)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("health_requires_key", &self.health_requires_key)
            .field("error_rate", &self.error_rate)
            .field("close_rate", &self.close_rate)
            .field("hang_rate", &self.hang_rate)
            .field("prefix_cache_blocks", &self.prefix_cache_blocks)
            .field("block_chars", &self.block_chars)
            .field("threads", &self.threads)
            .field("force_gzip", &self.force_gzip)
            .field("line_ending", &self.line_ending)
            .field("lora", &self.lora)
            .field("max_loras", &self.max_loras)
            .field("lora_load", &self.lora_load)
            .field("engine", &self.engine)
            .finish()
    }
}

const USAGE: &str = "\
mcas-sim: a fast vLLM-like OpenAI-compatible upstream simulator

usage: mcas-sim [--listen ADDR] [flags]

  --listen ADDR               bind address (default 127.0.0.1:8000)
  --replica-id NAME           value of x-mcas-replica (default sim-<port>)
  --models A,B                model ids served (default sim-model)
  --tokens N                  completion tokens per request (default 16)
  --ttft-ms N                 time to first token, ms (default 0)
  --itl-ms N                  delay between tokens, ms (default 0)
  --api-key KEY               require Authorization: Bearer KEY on /v1/* (default none)
  --health-requires-key       /health requires the key too
  --error-rate F              fraction of completions answered 500 (default 0)
  --close-rate F              fraction of completions cut half way (default 0)
  --hang-rate F               fraction of completions never answered (default 0)
  --prefix-cache-blocks N     prefix cache capacity in blocks (default 4096, 0 = off)
  --block-chars N             prompt chars per cache block (default 64)
  --threads N                 tokio worker threads (default 1)
  --force-gzip                gzip every answer, even when asked for identity
  --line-ending lf|crlf|cr    line ending of streamed (SSE) answers (default lf)
  --lora A,B                  LoRA adapters on the first model (listed with parent)
  --max-loras N               adapters loaded at once (default 1)
  --lora-load-ms N            time to load an adapter, ms (default 0)
  --max-seqs N                replica model on: sequences decoded together (default 0 = off;
                              then --ttft-ms / --itl-ms pace answers instead)
  --kv-blocks N               replica model: KV capacity in blocks of --block-chars (default 4096)
  --prefill-us-per-token N    replica model: prefill time per uncached prompt token (default 0)
  --decode-ms-per-step N      replica model: step time of a batch of one, ms (default 10)
  --decode-batch-factor F     replica model: step time growth per extra sequence (default 0)
  --help                      this text

request headers: x-sim-tokens, x-sim-ttft-ms, x-sim-itl-ms, x-sim-fail: error|close|hang,
x-sim-status: NNN
";

/// The `--help` text.
pub fn usage() -> &'static str {
    USAGE
}

impl SimConfig {
    /// Parses flags (without the program name): `--flag VALUE` or `--flag=VALUE`.
    /// `--help` yields `Err(usage())`; any other error names the bad flag.
    pub fn from_args(args: impl Iterator<Item = String>) -> Result<SimConfig, String> {
        let mut cfg = SimConfig::default();
        let mut args = args;
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg, None),
            };
            match flag.as_str() {
                "--help" | "-h" => return Err(USAGE.to_string()),
                "--health-requires-key" => {
                    cfg.health_requires_key = true;
                    continue;
                }
                "--force-gzip" => {
                    cfg.force_gzip = true;
                    continue;
                }
                _ => {}
            }
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(format!("{flag}: missing value")),
            };
            cfg.set(&flag, &value)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn set(&mut self, flag: &str, v: &str) -> Result<(), String> {
        match flag {
            "--listen" => self.listen = parse(flag, v)?,
            "--replica-id" => self.replica_id = Some(v.to_string()),
            "--models" => {
                self.models = v.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect()
            }
            "--tokens" => self.tokens = parse(flag, v)?,
            "--ttft-ms" => self.ttft = Duration::from_millis(parse(flag, v)?),
            "--itl-ms" => self.itl = Duration::from_millis(parse(flag, v)?),
            "--api-key" => self.api_key = Some(v.to_string()),
            "--error-rate" => self.error_rate = parse(flag, v)?,
            "--close-rate" => self.close_rate = parse(flag, v)?,
            "--hang-rate" => self.hang_rate = parse(flag, v)?,
            "--prefix-cache-blocks" => self.prefix_cache_blocks = parse(flag, v)?,
            "--block-chars" => self.block_chars = parse(flag, v)?,
            "--threads" => self.threads = parse(flag, v)?,
            "--lora" => self.lora = v.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect(),
            "--max-loras" => self.max_loras = parse(flag, v)?,
            "--lora-load-ms" => self.lora_load = Duration::from_millis(parse(flag, v)?),
            "--line-ending" => {
                self.line_ending = match v {
                    "lf" => LineEnding::Lf,
                    "crlf" => LineEnding::CrLf,
                    "cr" => LineEnding::Cr,
                    _ => return Err(format!("{flag}: expected lf, crlf or cr, got {v:?}")),
                }
            }
            _ => match self.engine.set(flag, v) {
                Some(r) => r?,
                None => return Err(format!("{flag}: unknown flag (see --help)")),
            },
        }
        Ok(())
    }

    /// Checks ranges; also useful to callers that build a `SimConfig` by hand.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, rate) in
            [("--error-rate", self.error_rate), ("--close-rate", self.close_rate), ("--hang-rate", self.hang_rate)]
        {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag}: {rate} is not within 0..1"));
            }
        }
        if self.models.is_empty() {
            return Err("--models: at least one model id is needed".to_string());
        }
        if self.block_chars == 0 {
            return Err("--block-chars: must be at least 1".to_string());
        }
        if self.max_loras == 0 {
            return Err("--max-loras: must be at least 1".to_string());
        }
        self.engine.validate()?;
        if self.threads == 0 {
            return Err("--threads: must be at least 1".to_string());
        }
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    v.parse().map_err(|e| format!("{flag}: cannot parse {v:?}: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn parses_flags_in_both_forms() {
        let cfg =
            SimConfig::from_args(args("--listen 127.0.0.1:9 --models a,b --tokens=3 --itl-ms 5 --health-requires-key"))
                .unwrap();
        assert!(!cfg.force_gzip);
        assert!(SimConfig::from_args(args("--force-gzip --tokens 2")).unwrap().force_gzip);
        assert_eq!(SimConfig::from_args(args("--line-ending cr")).unwrap().line_ending, LineEnding::Cr);
        assert!(SimConfig::from_args(args("--line-ending lfcr")).is_err());
        assert_eq!(cfg.listen.port(), 9);
        assert_eq!(cfg.models, vec!["a", "b"]);
        assert_eq!(cfg.tokens, 3);
        assert_eq!(cfg.itl, Duration::from_millis(5));
        assert!(cfg.health_requires_key);
        let model = SimConfig::from_args(args("--max-seqs 8 --kv-blocks 64 --decode-batch-factor 0.1")).unwrap();
        assert_eq!((model.engine.max_seqs, model.engine.kv_blocks), (8, 64));
        assert!(SimConfig::from_args(args("--max-seqs 8 --kv-blocks 0")).is_err());
    }

    #[test]
    fn errors_name_the_flag() {
        let e = SimConfig::from_args(args("--tokens x")).unwrap_err();
        assert!(e.starts_with("--tokens:"), "{e}");
        let e = SimConfig::from_args(args("--error-rate 1.5")).unwrap_err();
        assert!(e.starts_with("--error-rate:"), "{e}");
        let e = SimConfig::from_args(args("--bogus 1")).unwrap_err();
        assert!(e.starts_with("--bogus:"), "{e}");
        let e = SimConfig::from_args(args("--ttft-ms")).unwrap_err();
        assert!(e.starts_with("--ttft-ms:"), "{e}");
    }

    #[test]
    fn debug_redacts_the_key() {
        let cfg = SimConfig { api_key: Some("sekrit".into()), ..SimConfig::default() };
        assert!(!format!("{cfg:?}").contains("sekrit"));
    }
}
