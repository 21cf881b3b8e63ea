//! `mcas-telegram`: the Telegram channel runner. Configuration comes from the environment
//! and optionally `--config conf/telegram.yaml` (the environment wins). See docs/telegram.md.
//!
//!     MCAS_TELEGRAM_BOT_TOKEN=… MCAS_GATEWAY_KEY=… MCAS_TELEGRAM_MODEL=… \
//!     MCAS_TELEGRAM_STATE_DIR=/tmp/tg MCAS_TELEGRAM_ALLOWED_USERS=123 mcas-telegram
//!     curl -s 127.0.0.1:18090/status

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use mcas::observe::redact::{self, redact};
use mcas::telegram::{self, Config};

const USAGE: &str = "usage: mcas-telegram [--config FILE] [--check] [--webhook]

  --config FILE  YAML settings (conf/telegram.yaml); the environment overrides them
  --check        validate the configuration, print every problem, exit 1 if any
  --webhook      take updates from Telegram's webhook instead of long polling";

struct Args {
    config: Option<PathBuf>,
    check: bool,
    webhook: bool,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = Args { config: None, check: false, webhook: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = Some(it.next().context("--config needs a file")?.into()),
            "--check" | "-t" => args.check = true,
            "--webhook" => args.webhook = true,
            "--help" | "-h" => return Ok(None),
            "--version" | "-V" => {
                println!("mcas-telegram {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    mcas::observe::logging::init("info");
    match run() {
        Ok(code) => code,
        Err(e) => {
            // Error chains can quote URLs, and Bot API URLs hold the token.
            eprintln!("mcas-telegram: {}", redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let env = |name: &str| std::env::var(name).ok();
    let config = match Config::load(args.config.as_deref(), args.webhook, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error:\n{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    redact::remember(config.telegram.bot_token.expose());
    redact::remember(config.gateway.key.expose());
    if let Some(w) = &config.telegram.webhook {
        redact::remember(w.secret_token.expose());
    }
    if args.check {
        println!("configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(telegram::run(config))?;
    Ok(ExitCode::SUCCESS)
}
