//! The requests the gateway sends a backend of its own accord, outside the proxy path: health
//! probes (`probe.rs`), the inference scrapes (`inference/scrape.rs`) and adapter learning
//! (`lora/learn.rs`). One place addresses them as the proxy path does: plain HTTP goes to the
//! backend's address with the provider's Host header; HTTPS resolves the SNI name to this
//! backend's address (so the certificate is checked against that name) with the provider's CA
//! and verify setting; the provider's key goes as the bearer. Errors are short and carry no URL
//! (which could name a host the operator keeps private).

use super::Provider;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` on the backend at `addr`, within `timeout` (connect and whole answer).
pub async fn get(p: &Provider, addr: SocketAddr, path: &str, timeout: Duration) -> Result<reqwest::Response, String> {
    let mut builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).no_proxy();
    let url = match &p.tls {
        None => format!("http://{addr}{path}"),
        Some(tls) => {
            // One client per backend: reqwest keeps one override per name, so a client shared by
            // the backends of an HTTPS provider would send every request to the last one.
            builder = builder.resolve(&tls.sni, addr).danger_accept_invalid_certs(!tls.verify);
            for der in &tls.ca_der {
                let cert = reqwest::Certificate::from_der(der).map_err(|e| format!("CA: {e}"))?;
                builder = builder.add_root_certificate(cert);
            }
            format!("https://{}:{}{path}", tls.sni, addr.port())
        }
    };
    let client = builder.build().map_err(describe)?;
    let mut req = client.get(&url);
    if p.tls.is_none() {
        req = req.header(http::header::HOST, p.host_header.as_str());
    }
    if let Some(key) = &p.api_key {
        req = req.bearer_auth(key.expose());
    }
    req.send().await.map_err(describe)
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
