//! The conformance suite on the in-process bus, and the local bus's own
//! slow-consumer policy.

use std::time::{Duration, Instant};

use psrpc::bus::MessageBus;
use psrpc::protocol::wire::{self, Request};
use psrpc::{Channel, LocalBus};

psrpc_tests::conformance!(psrpc_tests::LocalFactory::new());

/// The same suite with every server opted in to claim skip.
mod skip_claim {
    #[allow(unused_imports)]
    use super::*;

    psrpc_tests::conformance!(psrpc_tests::SkipClaim(psrpc_tests::LocalFactory::new()));
}

fn ch(name: &str) -> Channel {
    Channel {
        legacy: name.into(),
        server: name.into(),
        local: String::new(),
    }
}

fn msg(id: usize) -> bytes::Bytes {
    wire::encode_msg(&Request {
        request_id: id.to_string(),
        ..Default::default()
    })
}

/// A subscriber that never reads loses what does not fit: the publisher
/// waits for it once, up to the slow-consumer timeout, and from then on it
/// counts as stuck and messages are dropped for it at once; the other
/// subscribers of the channel and of other channels get everything, and
/// other publishers are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_others() {
    let bus = LocalBus::with_slow_consumer_timeout(Duration::from_millis(50));
    let _stuck = bus.subscribe(&ch("a"), 1).await.unwrap();
    let mut same = bus.subscribe(&ch("a"), 100).await.unwrap();
    let mut other = bus.subscribe(&ch("b"), 100).await.unwrap();

    // Another publisher, on another channel, while "a" is stuck.
    let b2 = bus.clone();
    let other_pub = tokio::spawn(async move {
        let start = Instant::now();
        for i in 0..10 {
            b2.publish(&ch("b"), msg(i)).await.unwrap();
        }
        start.elapsed()
    });
    let start = Instant::now();
    for i in 0..10 {
        bus.publish(&ch("a"), msg(i)).await.unwrap();
    }
    let took = start.elapsed();
    // The first message fits the stuck buffer; the second waits the
    // timeout, then it and the other eight are dropped for the stuck
    // subscriber alone.
    assert_eq!(bus.dropped(), 9);
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(
        other_pub.await.unwrap() < Duration::from_millis(40),
        "unrelated publisher not stalled"
    );
    for sub in [&mut same, &mut other] {
        for i in 0..10 {
            let r: Request =
                psrpc::codec::decode_envelope(sub.try_recv().expect("delivered")).unwrap();
            assert_eq!(r.request_id, i.to_string());
        }
    }
}

/// A consumer that keeps up loses nothing, even with a small buffer: the
/// publisher waits for room instead of dropping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_into_small_buffer_loses_nothing() {
    let bus = LocalBus::new();
    let mut sub = bus.subscribe(&ch("burst"), 4).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(b) = sub.recv().await {
            let r: Request = psrpc::codec::decode_envelope(b).unwrap();
            assert_eq!(r.request_id, n.to_string(), "in order");
            n += 1;
            if n == 20_000 {
                break;
            }
        }
        n
    });
    for i in 0..20_000 {
        bus.publish(&ch("burst"), msg(i)).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 20_000);
    assert_eq!(bus.dropped(), 0);
}

/// Queue members get messages in turn; a full member is skipped for one with room.
#[tokio::test]
async fn queue_round_robin_skips_full_member() {
    let bus = LocalBus::new();
    let mut a = bus.subscribe_queue(&ch("q"), 1).await.unwrap();
    let mut b = bus.subscribe_queue(&ch("q"), 100).await.unwrap();
    for i in 0..10 {
        bus.publish(&ch("q"), msg(i)).await.unwrap();
    }
    let mut na = 0;
    while a.try_recv().is_ok() {
        na += 1;
    }
    let mut nb = 0;
    while b.try_recv().is_ok() {
        nb += 1;
    }
    assert_eq!(na + nb, 10);
    assert_eq!(na, 1, "a's buffer holds one");
    assert_eq!(bus.dropped(), 0);
    // Closing a subscription removes it: everything goes to the other member.
    b.close();
    for i in 0..3 {
        bus.publish(&ch("q"), msg(i)).await.unwrap();
        assert!(a.recv().await.is_some());
    }
}

/// The whole suite again with every message compressed.
mod compressed {
    psrpc_tests::conformance!(psrpc_tests::compression::Compressed::every_message(
        psrpc_tests::LocalFactory::new()
    ));
}
