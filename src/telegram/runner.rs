//! The runner: start-up, the long-poll loop (or the webhook listener), and dispatch of
//! updates to per-chat chains so chats run concurrently while each chat stays in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::bot_api::{BotApi, BotError};
use super::bot_types::Update;
use super::chat::{self, Ctx, Me};
use super::config::Config;
use super::gateway::{Gateway, GatewayError};
use super::metrics::Metrics;
use super::retry::{retrying, Backoff};
use super::state::{Ledger, StateError, Store};
use super::status::{serve, status_handler, Health};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("state directory: {0}")]
    State(#[from] StateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Bot(#[from] BotError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// Shared by the poll loop, the webhook handler and the chat tasks.
pub struct Runner {
    pub ctx: Arc<Ctx>,
    ledger: Arc<Mutex<Ledger>>,
    /// Per chat, the task handling its latest update; the next one awaits it first.
    chains: Mutex<HashMap<i64, JoinHandle<()>>>,
}

/// Finished chains are pruned every this many dispatches.
const PRUNE_EVERY: usize = 256;

impl Runner {
    /// Journals updates and starts handling the fresh ones.
    pub async fn accept(self: &Arc<Self>, updates: Vec<Update>) -> Result<(), StateError> {
        let ledger = self.ledger.clone();
        let fresh = match tokio::task::spawn_blocking(move || lock(&ledger).accept(updates)).await {
            Ok(result) => result?,
            Err(e) => return Err(join_error(e)),
        };
        for update in fresh {
            self.dispatch(update);
        }
        Ok(())
    }

    fn dispatch(self: &Arc<Self>, update: Update) {
        let id = update.update_id;
        let runner = self.clone();
        let Some(msg) = update.message else {
            tokio::spawn(async move { runner.done(id).await });
            return;
        };
        let chat_id = msg.chat.id;
        let mut chains = lock(&self.chains);
        let previous = chains.remove(&chat_id);
        let handle = tokio::spawn(async move {
            if let Some(previous) = previous {
                // A panic in the previous message's task must not stall this chat.
                let _ = previous.await;
            }
            chat::handle(&runner.ctx, msg).await;
            runner.done(id).await;
        });
        chains.insert(chat_id, handle);
        if chains.len().is_multiple_of(PRUNE_EVERY) {
            chains.retain(|_, h| !h.is_finished());
        }
    }

    async fn done(&self, update_id: i64) {
        let ledger = self.ledger.clone();
        let result = tokio::task::spawn_blocking(move || lock(&ledger).done(update_id))
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        match result {
            Ok(()) => self.ctx.metrics.handled.inc(),
            Err(e) => {
                log::error!("{e}");
                self.ctx.metrics.error("state");
            }
        }
    }

    /// Waits (bounded) for the chats still answering, e.g. on shutdown.
    async fn drain(&self, within: Duration) {
        let handles: Vec<JoinHandle<()>> = lock(&self.chains).drain().map(|(_, h)| h).collect();
        let all = futures_util::future::join_all(handles);
        if tokio::time::timeout(within, all).await.is_err() {
            log::warn!("shutdown: some chats were still answering; they resume after restart");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn join_error(e: tokio::task::JoinError) -> StateError {
    StateError::Io { path: "updates.json".to_string(), source: std::io::Error::other(e) }
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), RunError> {
    let store = Store::open(&config.state_dir)?;
    let ledger = Ledger::load(store.ledger_path())?;
    let metrics = Arc::new(Metrics::new()?);
    let webhook = config.telegram.webhook.is_some();
    let health = Arc::new(Health::new(webhook, config.telegram.poll_timeout));

    let status = bind(config.status_listen.to_string()).await?;
    log::info!("status on http://{}/status", config.status_listen);
    tokio::spawn(serve(status, status_handler(health.clone(), metrics.clone())));

    let bot = BotApi::new(&config.telegram.api_url, &config.telegram.bot_token)?;
    let g = &config.gateway;
    let gateway = Gateway::new(&g.url, &g.key, g.timeout)?;
    tokio::spawn(probe(gateway.clone(), g.model.clone(), g.probe_interval, health.clone()));

    let me = identify(&bot, &health).await;
    log::info!("bot @{} (id {}) answering with {}", me.username, me.id, g.model);
    let allowed = &config.telegram.allowed_users;
    if !allowed.all && allowed.ids.is_empty() {
        log::warn!("the allowlist is empty: everybody will be refused");
    }
    let ctx = Ctx::new(config, bot, gateway, store, health, metrics, me);
    let pending = ledger.pending();
    let runner = Arc::new(Runner {
        ctx: Arc::new(ctx),
        ledger: Arc::new(Mutex::new(ledger)),
        chains: Mutex::new(HashMap::new()),
    });
    if !pending.is_empty() {
        log::info!("resuming {} update(s) left unhandled", pending.len());
    }
    for update in pending {
        runner.dispatch(update);
    }

    let work: JoinHandle<Result<(), RunError>> = match runner.ctx.config.telegram.webhook.clone() {
        Some(hook) => {
            let listener = bind(hook.listen.to_string()).await?;
            tokio::spawn(super::webhook::run(runner.clone(), hook, listener))
        }
        None => tokio::spawn(poll(runner.clone())),
    };
    tokio::select! {
        r = work => match r {
            Ok(result) => result?,
            Err(e) => log::error!("runner task: {e}"),
        },
        _ = shutdown_signal() => log::info!("shutting down"),
    }
    runner.drain(Duration::from_secs(10)).await;
    Ok(())
}

async fn bind(addr: String) -> Result<TcpListener, RunError> {
    TcpListener::bind(&addr).await.map_err(|source| RunError::Listen { addr, source })
}

/// `getMe`, retried until Telegram answers: a runner started before the network is up
/// should come up by itself (and `/status` says why it is not healthy meanwhile).
async fn identify(bot: &BotApi, health: &Health) -> Me {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match bot.get_me().await {
            Ok(user) => {
                health.telegram(Ok(()), false);
                return Me { id: user.id, username: user.username.unwrap_or_default() };
            }
            Err(e) => {
                log::error!("{e}");
                health.telegram(Err(e.to_string()), false);
                let wait = e.retry_after().unwrap_or_else(|| backoff.delay());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Long polling: offset = last update id + 1 from the ledger, so confirmation to Telegram
/// happens only for updates already journaled.
async fn poll(runner: Arc<Runner>) -> Result<(), RunError> {
    let ctx = runner.ctx.clone();
    // A webhook would make getUpdates fail with 409.
    retrying(|| ctx.bot.delete_webhook()).await?;
    let timeout = ctx.config.telegram.poll_timeout;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let offset = lock(&runner.ledger).offset();
        match ctx.bot.get_updates(offset, timeout).await {
            Ok(updates) => {
                ctx.health.telegram(Ok(()), true);
                ctx.metrics.polls.with_label_values(&["ok"]).inc();
                backoff.reset();
                if let Err(e) = runner.accept(updates).await {
                    // Not journaled, so not confirmed: the next poll gets them again.
                    log::error!("{e}");
                    ctx.metrics.error("state");
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
            Err(e) => {
                ctx.metrics.polls.with_label_values(&["error"]).inc();
                ctx.metrics.error("telegram");
                ctx.health.telegram(Err(e.to_string()), true);
                if e.code() == Some(409) {
                    log::error!("{e} (another runner polls this bot, or a webhook is set)");
                } else {
                    log::warn!("{e}");
                }
                let wait = e.retry_after().unwrap_or_else(|| backoff.delay());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Keeps `/status` current about the gateway (and, in webhook mode, about Telegram).
async fn probe(gateway: Gateway, model: String, every: Duration, health: Arc<Health>) {
    let mut warned = false;
    loop {
        match gateway.models().await {
            Ok(models) => {
                health.gateway(Ok(()));
                if !warned && !models.is_empty() && !models.contains(&model) {
                    log::warn!("the gateway does not list model {model} for this key");
                    warned = true;
                }
            }
            Err(e) if e.is_outage() => {
                log::warn!("gateway probe: {e}");
                health.gateway(Err(e.to_string()));
            }
            Err(e) => {
                // It answered (e.g. 404: no model list behind this route): reachable.
                log::warn!("gateway probe: {e}");
                health.gateway(Ok(()));
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("no SIGTERM handler: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
