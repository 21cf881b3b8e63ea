//! Half-open circuits let exactly one trial through, however many requests race for it.

use super::{client, own_gateway, KEY};
use crate::common::gateway::key_yaml;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-backend provider whose circuit opens at the first 500; once the cool-down has passed,
/// many requests at once: exactly one reaches the backend (the half-open trial).
#[tokio::test]
async fn half_open_circuit_lets_one_trial_through() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                // The first answer opens the circuit; the trial is slow, so the others race it.
                let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let body = "{}";
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let rest = format!(
        "{}providers:\n  - {{ name: one, url: \"http://{backend}\", backends: [\"{backend}\"], models: [\"*\"], \
         circuit: {{ failures: 1, cooldown: 1s }}, retries: 0, health: {{ enabled: false }} }}\n",
        key_yaml("alice", KEY)
    );
    // Two worker threads, so requests really race.
    let gw = own_gateway("", &rest).await;
    let url = format!("http://{}/v1/models", gw.addr);
    assert_eq!(client().get(&url).bearer_auth(KEY).send().await.unwrap().status(), 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let racers: Vec<_> = (0..24)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).bearer_auth(KEY).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap().unwrap());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2, "trials let through: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
}

/// Selection itself under a race: threads pick from a provider whose only backend's circuit
/// has just finished its cool-down; exactly one pick gets the backend (the trial), the others
/// get nothing.
#[test]
fn concurrent_picks_take_one_half_open_trial() {
    use mcas::fleet::circuit::CircuitSettings;
    use mcas::fleet::{Backend, Fleet, Provider, Timeouts};
    use std::sync::Barrier;
    for round in 0..40 {
        let backend = Arc::new(Backend::new("127.0.0.1:9".parse().unwrap(), 1));
        let fleet = Fleet {
            circuit: CircuitSettings {
                failures: 1,
                window: Duration::from_secs(10),
                cooldown: Duration::from_millis(30),
            },
            ..Fleet::default()
        };
        let models = mcas::keys::ModelGlobs(vec!["*".into()]);
        let p = Provider::new(
            "p",
            "h".into(),
            String::new(),
            None,
            None,
            models,
            vec![backend.clone()],
            Timeouts::default(),
        )
        .with_fleet(fleet);
        let p = Arc::new(p);
        p.record_failure(&backend);
        assert!(p.pick(b"k", &[]).is_none(), "an open circuit let a request through");
        std::thread::sleep(Duration::from_millis(40));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    (0..50).filter(|_| p.pick(b"k", &[]).is_some()).count()
                })
            })
            .collect();
        let picked: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(picked, 1, "round {round}: {picked} requests sent to a half-open backend");
    }
}
