//! A stream peer killed by SIGKILL on Redis: the other end ends the stream
//! with `unavailable` within a bounded time. The peer is this test binary
//! run again as a child process (the test `liveness_peer`).

use std::sync::{Arc, Mutex};

use psrpc::bus::DynBus;
use psrpc_redis::RedisBus;
use psrpc_tests::liveness;
use psrpc_tests::servers::RedisServer;

async fn connect(url: &str) -> DynBus {
    Arc::new(RedisBus::connect(url).await.expect("connect"))
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
    let broker = RedisServer::start();
    let url = broker.url();
    let server = liveness::spawn_child("liveness_peer", "server", &url);
    let took = liveness::client_learns_server_killed(connect(&url).await, server).await;
    eprintln!("redis: the client learnt of the killed server in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_learns_that_its_client_was_killed() {
    let broker = RedisServer::start();
    let url = broker.url();
    let took = liveness::server_learns_client_killed(connect(&url).await, || {
        liveness::spawn_child("liveness_peer", "client", &url)
    })
    .await;
    eprintln!("redis: the server learnt of the killed client in {took:?}");
}

/// A peer without presence (a Go peer never subscribes one) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_presence_is_kept() {
    let broker = RedisServer::start();
    liveness::peer_without_presence_is_kept(connect(&broker.url()).await).await;
}

/// A young stream has subscribed no presence channel; an older one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_streams_subscribe_no_presence() {
    let broker = RedisServer::start();
    liveness::young_streams_subscribe_no_presence(connect(&broker.url()).await).await;
}

/// Watching publishes nothing at all on Redis (`PUBSUB NUMSUB` only asks):
/// a spy subscribed to every channel hears only psrpc envelopes, none on a
/// presence channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_publishes_nothing() {
    use futures::StreamExt;
    let broker = RedisServer::start();
    let client = redis::Client::open(broker.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("spy");
    pubsub.psubscribe("*").await.unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let spy = {
        let heard = heard.clone();
        tokio::spawn(async move {
            let mut msgs = pubsub.on_message();
            while let Some(m) = msgs.next().await {
                let payload: Vec<u8> = m.get_payload().unwrap();
                heard
                    .lock()
                    .unwrap()
                    .push((m.get_channel_name().to_owned(), payload));
            }
        })
    };
    liveness::one_watched_stream(connect(&broker.url()).await).await;
    psrpc_tests::eventually(
        "the spy heard the stream",
        std::time::Duration::from_secs(20),
        || heard.lock().unwrap().len() >= 5,
    )
    .await;
    spy.abort();
    let heard = heard.lock().unwrap().clone();
    for (channel, payload) in &heard {
        assert!(!channel.ends_with("|LIVE"), "published on {channel}");
        liveness::assert_psrpc_envelope(channel, payload);
    }
    assert!(heard.len() >= 5, "the spy heard the stream: {heard:?}");
}
