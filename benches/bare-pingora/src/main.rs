//! Bare Pingora reverse proxy: the reference the gateway is measured against (docs/benchmarks.md).
//!
//! `bare-pingora LISTEN UPSTREAM` (e.g. `127.0.0.1:8080 127.0.0.1:8000`): every request goes to
//! UPSTREAM over plain HTTP/1.1 with `Authorization` replaced; nothing else. The same settings as
//! the gateway where Pingora has them: one thread, one single-threaded runtime (no work
//! stealing), no downstream modules, no L4 read buffer on the listener, mimalloc.

use async_trait::async_trait;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UPSTREAM_AUTH: &str = "Bearer upstream-provider-key";

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        req.insert_header("authorization", UPSTREAM_AUTH)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let pid = std::process::id();
    let mut conf = ServerConf {
        threads: 1,
        pid_file: format!("/tmp/bare-pingora-{pid}.pid"),
        upgrade_sock: format!("/tmp/bare-pingora-{pid}.sock"),
        ..Default::default()
    };
    conf.work_stealing = false;
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream: upstream.clone() });
    proxy.add_listener(ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().read(0)));
    server.add_service(proxy);
    server.run_forever();
}
