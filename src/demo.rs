//! `--demo`: the gateway on 127.0.0.1:18080 in front of three embedded `mcas-sim` replicas,
//! with a freshly generated key printed for the newcomer to curl at once. Ctrl-C stops all.

use crate::config;
use crate::server::{self, ProcessFlags};
use crate::sim::{self, SimConfig};
use anyhow::Context;

pub const DEMO_LISTEN: &str = "127.0.0.1:18080";
pub const DEMO_ADMIN: &str = "127.0.0.1:18081";
const DEMO_MODEL: &str = "demo-model";

pub fn run(flags: ProcessFlags) -> anyhow::Result<()> {
    server::init_logging("info");
    // Before the replicas start and the key is printed: a second demo must not print a key that
    // the first one, still on these ports, would refuse.
    if !flags.upgrade {
        server::listen_free(
            [("the demo's listener", DEMO_LISTEN), ("the demo's admin listener", DEMO_ADMIN)],
            " (is another demo running? Stop it with Ctrl-C first)",
        )?;
    }
    let ports = start_replicas()?;
    let key = format!("mcas-demo-{:024x}", rand::random::<u128>() >> 32);
    let backends: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let yaml = format!(
        r#"
server: {{ listen: "{DEMO_LISTEN}", threads: 2 }}
admin: {{ listen: "{DEMO_ADMIN}" }}
keys:
  - {{ name: demo, key: "${{MCAS_DEMO_KEY}}", models: ["*"] }}
providers:
  - name: vllm
    url: "http://127.0.0.1:{first}/v1"
    models: ["*"]
    backends: [{list}]
"#,
        first = ports[0],
        list = backends.join(", ")
    );
    let demo_key = key.clone();
    let env = move |name: &str| if name == "MCAS_DEMO_KEY" { Some(demo_key.clone()) } else { None };
    let runtime = config::load_str(&yaml, &env).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    println!(
        "\nmcas-gateway demo: http://{DEMO_LISTEN} → 3 simulated vLLM replicas on ports {ports:?}\n\
         demo key: {key}\n\ntry:\n  curl -s http://{DEMO_LISTEN}/v1/chat/completions -H 'Authorization: Bearer {key}' \\\n    \
         -H 'content-type: application/json' -d '{{\"model\":\"{DEMO_MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n  \
         curl -N http://{DEMO_LISTEN}/v1/chat/completions -H 'Authorization: Bearer {key}' \\\n    \
         -H 'content-type: application/json' -d '{{\"model\":\"{DEMO_MODEL}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n  \
         curl -s http://{DEMO_ADMIN}/health\n\nCtrl-C stops everything.\n"
    );
    server::run(runtime, None, flags)
}

/// Binds three loopback ports and serves a replica on each from a background runtime.
fn start_replicas() -> anyhow::Result<Vec<u16>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the simulator runtime")?;
    let mut ports = Vec::new();
    for i in 0..3 {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a simulator port")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let cfg = SimConfig {
            replica_id: Some(format!("sim-{}", i + 1)),
            models: vec![DEMO_MODEL.to_string()],
            itl: std::time::Duration::from_millis(20),
            ..SimConfig::default()
        };
        rt.spawn(async move {
            match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => {
                    if let Err(e) = sim::serve(l, cfg).await {
                        log::error!("simulated replica stopped: {e}");
                    }
                }
                Err(e) => log::error!("simulated replica could not start: {e}"),
            }
        });
        ports.push(port);
    }
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    Ok(ports)
}
