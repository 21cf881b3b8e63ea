//! Webhook mode (`--webhook`): Telegram (usually through a TLS reverse proxy) POSTs updates;
//! each is journaled, dispatched and answered 200 at once, so Telegram never waits for a
//! model. Requests without the right `X-Telegram-Bot-Api-Secret-Token` get 401.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;

use super::bot_types::Update;
use super::config::WebhookConfig;
use super::retry::retrying;
use super::runner::{RunError, Runner};
use super::status::{respond, serve, HttpResponse};

const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Updates are small; anything bigger is not from Telegram.
const MAX_BODY: usize = 1 << 20;

pub async fn run(runner: Arc<Runner>, hook: WebhookConfig, listener: TcpListener) -> Result<(), RunError> {
    let ctx = runner.ctx.clone();
    if let Some(url) = &hook.url {
        retrying(|| ctx.bot.set_webhook(url, &hook.secret_token)).await?;
        log::info!("webhook registered with Telegram");
    }
    log::info!("webhook on http://{}{}", hook.listen, hook.path);
    let hook = Arc::new(hook);
    let handler = {
        let runner = runner.clone();
        move |req: Request<Incoming>| {
            let (runner, hook) = (runner.clone(), hook.clone());
            async move { handle(&runner, &hook, req).await }
        }
    };
    tokio::spawn(serve(listener, handler));
    // Nothing polls in this mode, so ask Telegram now and then whether it is reachable.
    let every = ctx.config.gateway.probe_interval.max(Duration::from_secs(30));
    loop {
        let result = ctx.bot.get_me().await.map(drop).map_err(|e| e.to_string());
        ctx.health.telegram(result, false);
        tokio::time::sleep(every).await;
    }
}

async fn handle(runner: &Arc<Runner>, hook: &WebhookConfig, req: Request<Incoming>) -> HttpResponse {
    if req.method() != Method::POST || req.uri().path() != hook.path {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let secret = req.headers().get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !hook.secret_token.matches(secret) {
        log::warn!("webhook: request without the right secret token");
        return respond(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large\n"),
    };
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            log::warn!("webhook: not an update: {e}");
            return respond(StatusCode::BAD_REQUEST, "text/plain", "bad update\n");
        }
    };
    runner.ctx.health.telegram(Ok(()), false);
    match runner.accept(vec![update]).await {
        Ok(()) => respond(StatusCode::OK, "application/json", "{}"),
        Err(e) => {
            // 500 makes Telegram redeliver later, which is what we want if the disk failed.
            log::error!("{e}");
            runner.ctx.metrics.error("state");
            respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "state error\n")
        }
    }
}
