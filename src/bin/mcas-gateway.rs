//! `mcas-gateway`: the proxy. Parses arguments and hands over to the library.

use clap::Parser;
use mcas::config;
use mcas::server::{self, ProcessFlags};
use std::process::ExitCode;

/// glibc's allocator showed up as ~20% of the proxy's CPU under load (malloc/free/consolidate);
/// mimalloc's thread-local free lists make the many small per-request allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "mcas-gateway", version, about = "Edge proxy for OpenAI-compatible model servers and MCP servers")]
struct Args {
    /// Configuration file (YAML).
    #[arg(long, default_value = "conf/gateway.yaml")]
    config: String,
    /// Validate the configuration, print every problem with its YAML path, and exit (1 if invalid).
    #[arg(long)]
    check: bool,
    /// Run on 127.0.0.1:18080 in front of three embedded simulated vLLM replicas.
    #[arg(long)]
    demo: bool,
    /// Run in the background (Pingora).
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (Pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let flags = ProcessFlags { daemon: args.daemon, upgrade: args.upgrade };
    if args.demo {
        return report(mcas::demo::run(flags));
    }
    let runtime = match config::load_file(&args.config, &config::process_env) {
        Ok(rt) => rt,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", args.config);
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    server::init_logging_for(&runtime.log);
    report(server::run(runtime, Some(args.config), flags))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcas-gateway: {e:#}");
            ExitCode::from(1)
        }
    }
}
