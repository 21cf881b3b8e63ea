//! `providers[].pool`: at most `max_connections` connections reach a backend at once, the
//! rest wait in a bounded queue or get 503 + `Retry-After`; a client that leaves frees its
//! place. The backend is a small HTTP/1.1 server in the test that counts its open
//! connections (and their peak) and holds every answer until the test opens its gate.

use crate::common::gateway::{spawn_gateway, Gw};
use crate::common::raw_http::read_message;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const KEY: &str = "client-key-0123456789";

/// A backend that counts connections and holds answers while its gate is shut.
struct Counting {
    addr: std::net::SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Requests received (answered or held).
    requests: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Counting {
    async fn start(gate_open: bool) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, gate_rx) = watch::channel(gate_open);
        let c =
            Counting { addr, open: Default::default(), peak: Default::default(), requests: Default::default(), gate };
        let (open, peak, requests) = (c.open.clone(), c.peak.clone(), c.requests.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let (open, requests, gate) = (open.clone(), requests.clone(), gate_rx.clone());
                tokio::spawn(async move {
                    serve(sock, requests, gate).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        c
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Reads requests (header, then a `Content-Length` body) and answers each once the gate is open.
async fn serve(mut sock: TcpStream, requests: Arc<AtomicUsize>, mut gate: watch::Receiver<bool>) {
    let mut buf = Vec::new();
    loop {
        let Some((_, len)) = read_message(&mut sock, &mut buf).await else { return };
        buf.drain(..len);
        requests.fetch_add(1, Ordering::SeqCst);
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn gateway(backend: &Counting, pool: &str) -> Gw {
    let rest = format!(
        "keys:\n  - {{ name: alice, key: \"{KEY}\", models: [\"*\"] }}\n\
         providers:\n  - name: slow\n    url: \"http://{}/v1\"\n    pool: {pool}\n",
        backend.addr
    );
    spawn_gateway("", &rest, &[]).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(0).build().unwrap()
}

fn ask(c: &reqwest::Client, gw: &Gw) -> reqwest::RequestBuilder {
    c.post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
}

/// Polls the gateway's `/metrics` until the pool gauge of `state` reads `value`.
async fn gauge(gw: &Gw, backend: &Counting, state: &str, value: usize) {
    let series = format!(
        "mcas_upstream_pool_connections{{backend=\"{}\",provider=\"slow\",state=\"{state}\"}} {value}",
        backend.addr
    );
    let page = gw.metrics_with(&series).await;
    assert!(page.contains(&series), "{series} not in\n{page}");
}

/// Polls until the backend has received `n` requests.
async fn received(backend: &Counting, n: usize) {
    for _ in 0..500 {
        if backend.requests.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the backend got {} requests, not {n}", backend.requests.load(Ordering::SeqCst));
}

#[tokio::test]
async fn at_most_max_connections_reach_the_backend_and_the_rest_queue() {
    let backend = Counting::start(false).await;
    let gw = gateway(&backend, "{ max_connections: 2, queue: 10, queue_timeout: 30s }").await;
    let c = client();
    let tasks: Vec<_> = (0..6).map(|_| tokio::spawn(ask(&c, &gw).send())).collect();
    received(&backend, 2).await;
    gauge(&gw, &backend, "waiting", 4).await;
    gauge(&gw, &backend, "in_use", 2).await;
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2, "the queued requests did not reach the backend");
    backend.open_gate();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 6);
    assert!(backend.peak() <= 2, "{} connections were open at once", backend.peak());
    gauge(&gw, &backend, "in_use", 0).await;
    gauge(&gw, &backend, "waiting", 0).await;
    // Both connections were kept (max_idle defaults to max_connections).
    gauge(&gw, &backend, "idle", 2).await;
}

#[tokio::test]
async fn beyond_the_queue_and_past_its_timeout_requests_get_503_with_retry_after() {
    let backend = Counting::start(false).await;
    let gw = gateway(&backend, "{ max_connections: 1, max_idle: 0, queue: 1, queue_timeout: 1500ms }").await;
    let c = client();
    let first = tokio::spawn(ask(&c, &gw).send());
    received(&backend, 1).await;
    let queued = tokio::spawn(ask(&c, &gw).send());
    gauge(&gw, &backend, "waiting", 1).await;
    // The queue (1) is full: refused at once.
    let refused = ask(&c, &gw).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2", "the queue timeout, rounded up");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    // The queued one waits past queue_timeout while the backend holds the first: 503 too.
    let timed_out = queued.await.unwrap().unwrap();
    assert_eq!(timed_out.status(), 503);
    assert!(timed_out.headers().contains_key("retry-after"));
    backend.open_gate();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1, "refused requests never reached the backend");
    // max_idle 0: the connection is not kept once the request is done.
    for _ in 0..500 {
        if backend.open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend.open.load(Ordering::SeqCst), 0, "the gateway kept an idle connection despite max_idle 0");
    let page = gw.metrics_with("mcas_upstream_pool_refusals_total").await;
    for reason in ["queue_full", "queue_timeout"] {
        assert!(page.contains(&format!("reason=\"{reason}\"}} 1")), "{reason} not counted:\n{page}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let backend = Counting::start(false).await;
    let gw = gateway(&backend, "{ max_connections: 1, queue: 1, queue_timeout: 60s }").await;
    let c = client();
    let first = tokio::spawn(ask(&c, &gw).send());
    received(&backend, 1).await;
    let leaving = tokio::spawn(ask(&c, &gw).send());
    gauge(&gw, &backend, "waiting", 1).await;
    leaving.abort();
    let _ = leaving.await;
    gauge(&gw, &backend, "waiting", 0).await;
    // The place is free again: this one is queued, not refused, and served once the gate opens.
    let next = tokio::spawn(ask(&c, &gw).send());
    gauge(&gw, &backend, "waiting", 1).await;
    backend.open_gate();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(next.await.unwrap().unwrap().status(), 200);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2, "the request that left never reached the backend");
    assert_eq!(backend.peak(), 1);
}

#[test]
fn pool_settings_are_checked_with_their_path() {
    let base = "keys: [{ name: a, key: \"client-key-0123456789\", models: [\"*\"] }]\n\
                providers:\n  - name: p\n    url: \"http://127.0.0.1:9/v1\"\n    pool: ";
    for (pool, path) in [
        ("{ max_idle: 1 }", "providers[0].pool.max_connections"),
        ("{ max_connections: 2, max_idle: 3 }", "providers[0].pool.max_idle"),
        ("{ max_connections: 2, queue_timeout: 0s }", "providers[0].pool.queue_timeout"),
    ] {
        let (code, out) = crate::common::gateway::check(&format!("{base}{pool}\n"), &[]);
        assert_eq!(code, 1, "{pool}: {out}");
        assert!(out.contains(path), "{pool}: {out}");
    }
    let (code, out) = crate::common::gateway::check(&format!("{base}{{ max_connections: 4, queue: 0 }}\n"), &[]);
    assert_eq!(code, 0, "{out}");
}
