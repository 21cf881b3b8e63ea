// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Watching the idle connections of a [`TransportConnector`](super::TransportConnector)'s pool
//!
//! An idle connection that the server closes (or writes to), or that outlives its idle timeout,
//! must leave the pool and be closed. One task per connector watches all of them: the
//! connection's socket is polled with the task's waker when it is released, so the reactor
//! wakes the task when the server closes it, and the task sleeps until the earliest idle
//! deadline. Reusing a connection only takes it out of the pool; the task is not involved.

use crate::protocols::Stream;
use log::{debug, warn};
use parking_lot::Mutex;
use pingora_pool::ConnectionPool;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// An upstream connection in the idle pool.
pub(crate) struct IdleStream {
    pub(crate) stream: Stream,
    /// The end of its idle timeout, if it has one.
    deadline: Option<Instant>,
    /// When it went idle, read only for the keepalive pool callback.
    since: Option<Instant>,
}

impl IdleStream {
    pub(crate) fn new(stream: Stream, deadline: Option<Instant>, since: Option<Instant>) -> Self {
        IdleStream {
            stream,
            deadline,
            since,
        }
    }

    /// Whether it has outlived its idle timeout
    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| d <= Instant::now())
    }

    /// How long it has been idle, if that was recorded
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}

pub(crate) type IdlePool = ConnectionPool<IdleStream>;

/// What the connector shares with the task watching its pool
#[derive(Default)]
pub(crate) struct IdleWatch {
    state: Mutex<WatchState>,
    spawned: AtomicBool,
}

#[derive(Default)]
struct WatchState {
    /// The watching task's waker: `None` while no task runs
    waker: Option<Waker>,
    /// The earliest idle deadline the task is to wake for
    next: Option<Instant>,
    /// The connector is gone: the task ends
    stopped: bool,
}

impl IdleWatch {
    /// Test whether `stream` is still open and quiet (see `test_reusable_stream`); if so, its
    /// socket now wakes the watching task when the server closes it or writes to it.
    pub(crate) fn register(&self, stream: &mut Stream, unexpected_data: &AtomicU64) -> bool {
        let state = self.state.lock();
        let waker = state
            .waker
            .as_ref()
            .unwrap_or(futures::task::noop_waker_ref());
        poll_is_idle(
            stream,
            &mut Context::from_waker(waker),
            Some(unexpected_data),
        )
    }

    /// Make sure the task wakes by `deadline`.
    pub(crate) fn schedule(&self, deadline: Instant) {
        let mut state = self.state.lock();
        if state.next.is_none_or(|next| deadline < next) {
            state.next = Some(deadline);
            if let Some(waker) = &state.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// Start the watching task if none runs.
    pub(crate) fn ensure_running(self: &Arc<Self>, pool: &Arc<IdlePool>) {
        if self.spawned.load(Ordering::Relaxed) || self.spawned.swap(true, Ordering::AcqRel) {
            return;
        }
        // made here, not in the task: a task dropped before its first poll still resets the flag
        let running = Running(self.clone());
        let pool = Arc::downgrade(pool);
        // unconstrained: a sweep polls every idle socket, which must not run out of budget
        pingora_runtime::current_handle()
            .spawn(tokio::task::unconstrained(watch_idle(pool, running)));
    }

    /// End the watching task (the connector is dropped).
    pub(crate) fn stop(&self) {
        let mut state = self.state.lock();
        state.stopped = true;
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
    }
}

/// Poll an idle stream's read once. Pending means open and quiet, and leaves `cx`'s waker
/// registered on the socket; anything else means the connection is not reusable.
fn poll_is_idle(
    stream: &mut Stream,
    cx: &mut Context,
    unexpected_data: Option<&AtomicU64>,
) -> bool {
    let mut buf = [0; 1];
    let mut read_buf = ReadBuf::new(&mut buf);
    match Pin::new(stream).poll_read(cx, &mut read_buf) {
        Poll::Pending => true,
        Poll::Ready(Ok(())) => {
            if read_buf.filled().is_empty() {
                debug!("Idle connection is closed");
            } else {
                warn!("Unexpected data read in idle connection");
                if let Some(count) = unexpected_data {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            false
        }
        Poll::Ready(Err(e)) => {
            debug!("Idle connection is broken: {e:?}");
            false
        }
    }
}

/// Clears the task's registration when it ends (or its runtime drops it), so that the next
/// release starts another.
struct Running(Arc<IdleWatch>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.state.lock().waker = None;
        self.0.spawned.store(false, Ordering::Release);
    }
}

// far enough to mean never, near enough not to overflow an Instant
const NEVER: Duration = Duration::from_secs(86400 * 365);

/// The watching task: each time it is woken (an idle socket became readable, an earlier
/// deadline was scheduled, its sleep ended), it visits every idle connection, drops the ones
/// closed, written to or past their deadline, and sleeps until the earliest deadline left.
async fn watch_idle(pool: Weak<IdlePool>, running: Running) {
    let watch = &running.0;
    let mut sleep = Box::pin(tokio::time::sleep(NEVER));
    poll_fn(|cx| loop {
        let Some(pool) = pool.upgrade() else {
            return Poll::Ready(());
        };
        {
            let mut state = watch.state.lock();
            if state.stopped {
                return Poll::Ready(());
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            // a release during the sweep sets its own deadline here (and wakes this task)
            state.next = None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let removed = pool.retain(|idle| {
            if idle.deadline.is_some_and(|d| d <= now) {
                debug!("Idle connection reached its idle timeout");
                return false;
            }
            if !poll_is_idle(&mut idle.stream, cx, None) {
                return false;
            }
            if let Some(d) = idle.deadline {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            true
        });
        if removed > 0 {
            debug!("{removed} idle connections closed");
        }
        let next = {
            let mut state = watch.state.lock();
            state.next = match (state.next, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state.next
        };
        let wake_at = next.unwrap_or_else(|| now + NEVER);
        sleep.as_mut().reset(wake_at.into());
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::TransportConnector;
    use crate::protocols::Stream;
    use crate::upstreams::peer::{BasicPeer, Peer};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connector, a peer on loopback, a connection to it and the server's end of it
    async fn connected() -> (TransportConnector, BasicPeer, Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = BasicPeer::new(&listener.local_addr().unwrap().to_string());
        let connector = TransportConnector::new(None);
        let stream = connector.new_stream(&peer).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (connector, peer, stream, server)
    }

    /// Wait until the server sees the pool close the connection: end of stream, or a reset when
    /// the pool's end had unread data (a guard of 10 s turns a connection that is never closed
    /// into a failure instead of a hang)
    async fn assert_closed_by_pool(server: &mut TcpStream) {
        let mut buf = [0; 8];
        let read = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("the pool never closed the idle connection");
        match read {
            Ok(n) => assert_eq!(n, 0, "the server read data, not a close"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }

    #[tokio::test]
    async fn idle_timeout_closes_the_connection() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), Some(Duration::from_millis(20)));
        assert_closed_by_pool(&mut server).await;
        assert!(connector.reused_stream(&peer).await.is_none());
    }

    #[tokio::test]
    async fn zero_idle_timeout_closes_at_once() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), Some(Duration::ZERO));
        assert!(connector.reused_stream(&peer).await.is_none());
        assert_closed_by_pool(&mut server).await;
    }

    #[tokio::test]
    async fn server_close_removes_the_connection() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), None);
        // the server's FIN wakes the watch, which closes the pool's end
        server.shutdown().await.unwrap();
        assert_closed_by_pool(&mut server).await;
        assert!(connector.connection_pool.get(&peer.reuse_hash()).is_none());
    }

    #[tokio::test]
    async fn server_close_after_a_later_release_removes_the_connection() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), None);
        // let the watch start and go to sleep with nothing to wait for
        tokio::task::yield_now().await;
        let stream = connector.reused_stream(&peer).await.expect("reused");
        // released while the watch sleeps: only the release itself registers the socket
        connector.release_stream(stream, peer.reuse_hash(), None);
        server.shutdown().await.unwrap();
        assert_closed_by_pool(&mut server).await;
        assert!(connector.connection_pool.get(&peer.reuse_hash()).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_watched_from_another_thread() {
        let (connector, peer, stream, mut server) = connected().await;
        // the watch may run on either worker, woken by the reactor from the other
        connector.release_stream(stream, peer.reuse_hash(), None);
        server.shutdown().await.unwrap();
        assert_closed_by_pool(&mut server).await;
        assert!(connector.connection_pool.get(&peer.reuse_hash()).is_none());
    }

    #[tokio::test]
    async fn data_from_the_server_removes_the_connection() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), None);
        server.write_all(b"junk").await.unwrap();
        assert_closed_by_pool(&mut server).await;
        assert!(connector.reused_stream(&peer).await.is_none());
    }

    #[tokio::test]
    async fn reused_connection_is_watched_again_after_its_next_release() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), Some(Duration::from_secs(60)));
        let mut stream = connector.reused_stream(&peer).await.expect("reused");
        // the watch did not touch it while it was idle, nor while it is in use
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        connector.release_stream(stream, peer.reuse_hash(), Some(Duration::from_millis(20)));
        assert_closed_by_pool(&mut server).await;
    }

    #[tokio::test]
    async fn dropping_the_connector_closes_its_idle_connections() {
        let (connector, peer, stream, mut server) = connected().await;
        connector.release_stream(stream, peer.reuse_hash(), None);
        drop(connector);
        assert_closed_by_pool(&mut server).await;
    }

    #[tokio::test]
    async fn eviction_closes_the_oldest_and_calls_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let evicted = Arc::new(AtomicUsize::new(0));
        let counted = evicted.clone();
        let mut options = super::super::ConnectorOptions::new(1);
        options.keepalive_pool_callback = Some(Arc::new(move |_idle| {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        let connector = TransportConnector::new(Some(options));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = BasicPeer::new(&listener.local_addr().unwrap().to_string());
        let first = connector.new_stream(&peer).await.unwrap();
        let (mut first_server, _) = listener.accept().await.unwrap();
        let second = connector.new_stream(&peer).await.unwrap();
        let _second_server = listener.accept().await.unwrap();
        connector.release_stream(first, peer.reuse_hash(), None);
        connector.release_stream(second, peer.reuse_hash(), None);
        assert_closed_by_pool(&mut first_server).await;
        assert_eq!(evicted.load(Ordering::Relaxed), 1);
        assert!(connector.reused_stream(&peer).await.is_some());
        assert!(connector.reused_stream(&peer).await.is_none());
    }
}
