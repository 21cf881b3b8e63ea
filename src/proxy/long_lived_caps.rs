//! Caps on concurrent long-lived connections: event streams and WebSocket tunnels, gateway-wide
//! (`server.max_streams`, `server.max_tunnels`: 503), per route over all keys (`max_streams`,
//! `max_tunnels`: 503) and per key on a route (`max_streams_per_key`, `max_tunnels_per_key`: 429). A [`Slot`] holds one place and gives it back on drop, however
//! the connection ends. Counters are process-wide and keyed by route pattern and key name
//! (both from the config, so bounded), so they survive a reload.

use super::ctx::Routed;
use super::respond;
use crate::observe::metrics::metrics;
use once_cell::sync::Lazy;
use pingora::prelude::*;
use pingora_proxy::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Stream,
    Tunnel,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Stream => "event streams",
            Kind::Tunnel => "WebSocket tunnels",
        }
    }
}

type CounterKey = (Kind, String, Option<String>);
/// Counter name of the gateway-wide caps (`server.max_streams`, `server.max_tunnels`); route
/// patterns start with "/", so it cannot collide with one.
const GATEWAY: &str = "*";
static COUNTERS: Lazy<Mutex<HashMap<CounterKey, Arc<AtomicUsize>>>> = Lazy::new(Default::default);

fn counter(kind: Kind, route: &str, key: Option<&str>) -> Arc<AtomicUsize> {
    let mut map = match COUNTERS.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry((kind, route.to_string(), key.map(str::to_string))).or_default().clone()
}

/// One open stream or tunnel.
#[derive(Debug)]
pub struct Slot {
    kind: Kind,
    route: String,
    key: String,
    held: Vec<Arc<AtomicUsize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        for c in &self.held {
            c.fetch_sub(1, Ordering::AcqRel);
        }
        gauge(self.kind, &self.route, &self.key, -1);
    }
}

fn gauge(kind: Kind, route: &str, key: &str, delta: i64) {
    if let Some(m) = metrics() {
        let g = match kind {
            Kind::Stream => &m.open_streams,
            Kind::Tunnel => &m.open_tunnels,
        };
        g.with_label_values(&[route, key]).add(delta);
    }
}

/// Takes a place for this request, or answers 429/503 (returning the status).
pub async fn acquire(
    session: &mut Session,
    routed: &Routed,
    state: &mut super::long_lived::StreamState,
    request_id: &str,
) -> Result<Option<u16>> {
    let o = &routed.streams.opts;
    let server = &routed.runtime.server;
    let (kind, per_route, per_key, gateway) = if routed.streams.upgrade {
        (Kind::Tunnel, o.max_tunnels, o.max_tunnels_per_key, server.max_tunnels)
    } else {
        (Kind::Stream, o.max_streams, o.max_streams_per_key, server.max_streams)
    };
    let route = &*routed.route_label;
    let key = &*routed.key.name;
    let mut held = Vec::with_capacity(3);
    // (cap, counter's route, counter's key, status): per key on the route, the route, the gateway.
    let checks =
        [(per_key, route, Some(key), 429u16), (per_route, route, None, 503u16), (gateway, GATEWAY, None, 503u16)];
    for (cap, counted_route, key_part, status) in checks {
        let c = counter(kind, counted_route, key_part);
        let now = c.fetch_add(1, Ordering::AcqRel) + 1;
        held.push(c);
        if cap.is_some_and(|cap| now > cap) {
            for c in &held {
                c.fetch_sub(1, Ordering::AcqRel);
            }
            let cap = cap.unwrap_or(0);
            let (message, kind_s, code) = if status == 429 {
                (
                    format!("this key already holds {cap} {} on this route", kind.noun()),
                    "rate_limit_error",
                    "too_many_connections",
                )
            } else {
                let scope = if counted_route == GATEWAY { "in all" } else { "on this route" };
                (format!("the gateway already holds {cap} {} {scope}", kind.noun()), "server_error", "connection_limit")
            };
            let body = serde_json::json!({"error": {"message": message, "type": kind_s, "code": code}});
            session.set_keepalive(None);
            respond::json(
                session,
                status,
                body.to_string().into_bytes(),
                request_id,
                &[("retry-after", http::HeaderValue::from_static("1"))],
            )
            .await?;
            return Ok(Some(status));
        }
    }
    gauge(kind, route, key, 1);
    state.slots.push(Slot { kind, route: route.to_string(), key: key.to_string(), held });
    Ok(None)
}
