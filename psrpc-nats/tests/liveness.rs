//! A stream peer killed by SIGKILL on NATS: the other end ends the stream
//! with `unavailable` within a bounded time. The peer is this test binary
//! run again as a child process (the test `liveness_peer`).

use std::sync::{Arc, Mutex};

use psrpc::bus::DynBus;
use psrpc_nats::NatsBus;
use psrpc_tests::liveness;
use psrpc_tests::servers::NatsServer;

async fn connect(url: &str) -> DynBus {
    Arc::new(NatsBus::connect(url).await.expect("connect"))
}

/// The peer process's body; does nothing in a normal test run.
#[tokio::test]
async fn liveness_peer() {
    if let Some((role, url)) = liveness::child_role() {
        liveness::child_main(connect(&url).await, &role).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_learns_that_its_server_was_killed() {
    let broker = NatsServer::start(&[]);
    let url = broker.url();
    let server = liveness::spawn_child("liveness_peer", "server", &url);
    let took = liveness::client_learns_server_killed(connect(&url).await, server).await;
    eprintln!("nats: the client learnt of the killed server in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_learns_that_its_client_was_killed() {
    let broker = NatsServer::start(&[]);
    let url = broker.url();
    let took = liveness::server_learns_client_killed(connect(&url).await, || {
        liveness::spawn_child("liveness_peer", "client", &url)
    })
    .await;
    eprintln!("nats: the server learnt of the killed client in {took:?}");
}

/// A peer without presence (a Go peer never subscribes one) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_presence_is_kept() {
    let broker = NatsServer::start(&[]);
    liveness::peer_without_presence_is_kept(connect(&broker.url()).await).await;
}

/// A young stream has subscribed no presence channel; an older one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_streams_subscribe_no_presence() {
    let broker = NatsServer::start(&[]);
    liveness::young_streams_subscribe_no_presence(connect(&broker.url()).await).await;
}

/// What a Go peer can hear (every subject under `SRV.` and `CLI.`) carries
/// only psrpc envelopes while both ends of a stream watch each other: the
/// probes go to presence subjects only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_publishes_nothing_on_psrpc_subjects() {
    use futures::StreamExt;
    let broker = NatsServer::start(&[]);
    let spy = async_nats::connect(broker.url()).await.expect("spy");
    let heard = Arc::new(Mutex::new(Vec::new()));
    for subject in ["SRV.>", "CLI.>", "PSRPC_LIVE.>"] {
        let mut sub = spy.subscribe(subject).await.unwrap();
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                heard
                    .lock()
                    .unwrap()
                    .push((m.subject.to_string(), m.payload));
            }
        });
    }
    spy.flush().await.unwrap();
    liveness::one_watched_stream(connect(&broker.url()).await).await;
    // The spy has heard the stream once its close and a probe reached it.
    psrpc_tests::eventually(
        "the spy heard the stream",
        std::time::Duration::from_secs(20),
        || {
            let h = heard.lock().unwrap();
            let probes = h
                .iter()
                .filter(|(s, _)| s.starts_with("PSRPC_LIVE."))
                .count();
            h.len() - probes >= 5 && probes > 0
        },
    )
    .await;
    let heard = heard.lock().unwrap().clone();
    let (probes, psrpc): (Vec<_>, Vec<_>) = heard
        .iter()
        .partition(|(s, _)| s.starts_with("PSRPC_LIVE."));
    for (subject, payload) in &psrpc {
        liveness::assert_psrpc_envelope(subject, payload);
    }
    // open, claim, claim response, ack, one message, its ack, close.
    assert!(psrpc.len() >= 5, "the spy heard the stream: {psrpc:?}");
    assert!(!probes.is_empty(), "the ends probed each other");
    eprintln!(
        "nats: {} psrpc messages, {} presence probes in 2 s",
        psrpc.len(),
        probes.len()
    );
}
