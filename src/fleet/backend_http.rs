//! The requests the gateway sends a backend of its own accord, outside the proxy path: health
//! probes (`probe.rs`), the inference scrapes (`inference/scrape.rs`) and adapter learning
//! (`lora/learn.rs`). One place addresses them as the proxy path does: plain HTTP goes to the
//! backend's address with the provider's Host header; HTTPS resolves the SNI name to this
//! backend's address (so the certificate is checked against that name) with the provider's CA
//! and verify setting; the provider's key goes as the bearer. Errors are short and carry no URL
//! (which could name a host the operator keeps private).

use super::Provider;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept between a backend's rounds: long enough for scrapes every 500 ms to
/// reuse theirs, shorter than the keep-alive of common model servers (uvicorn, behind vLLM,
/// closes after 5 s), so a request never goes out on a connection the server is closing.
const IDLE: Duration = Duration::from_secs(2);

/// A provider's clients, one per (backend address, timeout), built on first use: CA
/// certificates are parsed once and connections reused, not built again for every probe and
/// scrape. They live with the provider: a reload or a change of members builds a new provider,
/// and so new clients with its settings. At most backends × distinct timeouts (probe, scrape,
/// adapter learning) of them.
#[derive(Default)]
pub struct Clients(Mutex<HashMap<(SocketAddr, Duration), reqwest::Client>>);

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

/// `GET path` on the backend at `addr`, within `timeout` (connect and whole answer).
pub async fn get(p: &Provider, addr: SocketAddr, path: &str, timeout: Duration) -> Result<reqwest::Response, String> {
    let client = client(p, addr, timeout)?;
    let url = match &p.tls {
        None => format!("http://{addr}{path}"),
        Some(tls) => format!("https://{}:{}{path}", tls.sni, addr.port()),
    };
    let mut req = client.get(&url);
    if p.tls.is_none() {
        req = req.header(http::header::HOST, p.host_header.as_str());
    }
    if let Some(key) = &p.api_key {
        req = req.bearer_auth(key.expose());
    }
    req.send().await.map_err(describe)
}

/// The provider's client for `addr` and `timeout`, built on first use.
fn client(p: &Provider, addr: SocketAddr, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut clients = p.http.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&(addr, timeout)) {
        return Ok(c.clone());
    }
    let mut builder =
        reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).pool_idle_timeout(IDLE).no_proxy();
    if let Some(tls) = &p.tls {
        // One client per backend: reqwest keeps one override per name, so a client shared by
        // the backends of an HTTPS provider would send every request to the last one.
        builder = builder.resolve(&tls.sni, addr).danger_accept_invalid_certs(!tls.verify);
        for der in &tls.ca_der {
            let cert = reqwest::Certificate::from_der(der).map_err(|e| format!("CA: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    let c = builder.build().map_err(describe)?;
    clients.insert((addr, timeout), c.clone());
    Ok(c)
}

/// The text of a 2xx answer to `GET path`, read up to `max` bytes.
pub async fn get_text(
    p: &Provider,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max: usize,
) -> Result<String, String> {
    let resp = get(p, addr, path, timeout).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(describe)?;
        if body.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "answer is not UTF-8".into())
}

/// reqwest errors carry the URL; keep logs short and free of anything but the kind.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connect failed".into()
    } else {
        e.without_url().to_string()
    }
}
