//! `mcas-sim`: a fast vLLM-like OpenAI-compatible upstream simulator.
//!
//! Run `mcas-sim --listen 127.0.0.1:8000`, then
//! `curl -s localhost:8000/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'`.
//! `--help` lists the flags.

use std::io::Write;
use std::process::ExitCode;

use mcas::sim::{self, SimConfig};

fn main() -> ExitCode {
    mcas::observe::logging::init("error");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", sim::usage());
        return ExitCode::SUCCESS;
    }
    let cfg = match SimConfig::from_args(args.into_iter()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("mcas-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()
    };
    let result = runtime.and_then(|rt| rt.block_on(run(cfg)));
    if let Err(e) = result {
        eprintln!("mcas-sim: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(cfg: SimConfig) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let name = cfg.replica_id.clone().unwrap_or_else(|| format!("sim-{}", addr.port()));
    println!("mcas-sim {name} listening on {addr}");
    std::io::stdout().flush()?;
    sim::serve(listener, cfg).await
}
