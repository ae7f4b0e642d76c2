//! `psrpc::testing` on the local bus: the test bus's interceptors, the laggy
//! bus's per-link delays and the unreliable bus's loss.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use psrpc::bus::{Channel, Handler, RawSubscription};
use psrpc::protocol::wire;
use psrpc::testing::{FailureRate, LAGGY_TYPE_URL, LaggyBus, LaggyMessage, TestBus, UnreliableBus};
use psrpc::{LocalBus, MessageBus};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(3);

fn channel() -> Channel {
    let name = psrpc::protocol::id::new_id("CH_");
    Channel {
        legacy: name.clone(),
        server: name,
        local: String::new(),
    }
}

/// An encoded `Msg` envelope carrying `n`.
fn msg(n: u32) -> Bytes {
    wire::encode_msg_raw("type.googleapis.com/test.N", &n.to_be_bytes())
}

/// The `n` of a [`msg`].
fn num(b: &Bytes) -> u32 {
    let m = wire::decode_msg(b.clone()).unwrap();
    u32::from_be_bytes(m.value[..].try_into().unwrap())
}

async fn recv(sub: &mut RawSubscription) -> Bytes {
    timeout(WAIT, sub.recv())
        .await
        .expect("timed out")
        .expect("subscription closed")
}

/// Everything that arrives until nothing has for `quiet`. The tests that
/// drain run in paused time, where the clock only moves on when every task
/// is waiting: a quiet period then means that the bus had nothing left to
/// deliver (and any delay it adds has passed), not that time ran out.
async fn drain(sub: &mut RawSubscription, quiet: Duration) -> Vec<u32> {
    let mut got = Vec::new();
    while let Ok(Some(b)) = timeout(quiet, sub.recv()).await {
        got.push(num(&b));
    }
    got
}

/// Nothing arrives within `d` (of paused time: see [`drain`]).
async fn nothing_within(sub: &mut RawSubscription, d: Duration) {
    if let Ok(m) = timeout(d, sub.recv()).await {
        panic!("expected nothing, got {m:?}");
    }
}

// ------------------------------------------------------------------ TestBus

#[tokio::test(start_paused = true)]
async fn publish_interceptor_alters_and_reroutes() {
    let local = LocalBus::new();
    let (a, b) = (channel(), channel());
    let (from, to) = (a.clone(), b.clone());
    // Adds 100 to every message, and moves those for `a` to `b`.
    let bus = TestBus::new(local.clone()).publish_interceptor(move |ch, m, next| {
        let ch = if ch == from { to.clone() } else { ch };
        next.publish(ch, msg(num(&m) + 100))
    });
    let mut sa = local.subscribe(&a, 8).await.unwrap();
    let mut sb = local.subscribe(&b, 8).await.unwrap();
    bus.publish(&a, msg(1)).await.unwrap();
    assert_eq!(num(&recv(&mut sb).await), 101);
    nothing_within(&mut sa, Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn publish_interceptor_drops() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).publish_interceptor(|ch, m, next| async move {
        if num(&m) % 2 == 0 {
            Ok(()) // dropped: `next` never called
        } else {
            next.publish(ch, m).await
        }
    });
    let mut sub = local.subscribe(&ch, 16).await.unwrap();
    for n in 0..6 {
        bus.publish(&ch, msg(n)).await.unwrap();
    }
    assert_eq!(drain(&mut sub, Duration::from_millis(50)).await, [1, 3, 5]);
}

#[tokio::test(start_paused = true)]
async fn publish_interceptor_delays() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).publish_interceptor(|ch, m, next| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        next.publish(ch, m).await
    });
    let mut sub = local.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    let publisher = tokio::spawn({
        let ch = ch.clone();
        async move { bus.publish(&ch, msg(7)).await }
    });
    assert_eq!(num(&recv(&mut sub).await), 7);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    publisher.await.unwrap().unwrap();
}

#[tokio::test]
async fn publish_interceptors_chain_first_outermost() {
    let local = LocalBus::new();
    let ch = channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let step = |name: &'static str, log: Arc<Mutex<Vec<&'static str>>>| {
        move |ch: Channel, m: Bytes, next: psrpc::testing::PublishNext| {
            log.lock().unwrap().push(name);
            let m = msg(num(&m) * 10 + if name == "first" { 1 } else { 2 });
            next.publish(ch, m)
        }
    };
    let bus = TestBus::new(local.clone())
        .publish_interceptor(step("first", log.clone()))
        .publish_interceptor(step("second", log.clone()));
    let mut sub = local.subscribe(&ch, 8).await.unwrap();
    bus.publish(&ch, msg(9)).await.unwrap();
    // `first` ran first and handed its result to `second`.
    assert_eq!(num(&recv(&mut sub).await), 912);
    assert_eq!(*log.lock().unwrap(), ["first", "second"]);
}

#[tokio::test(start_paused = true)]
async fn publish_interceptor_can_duplicate() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).publish_interceptor(|ch, m, next| async move {
        next.clone().publish(ch.clone(), m.clone()).await?;
        next.publish(ch, m).await
    });
    let mut sub = local.subscribe(&ch, 8).await.unwrap();
    bus.publish(&ch, msg(3)).await.unwrap();
    assert_eq!(drain(&mut sub, Duration::from_millis(50)).await, [3, 3]);
}

#[tokio::test]
async fn subscribe_interceptors_chain_first_outermost() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone())
        .subscribe_interceptor(|_, raw| raw.map(|m| msg(num(&m) * 10 + 1)).boxed())
        .subscribe_interceptor(|_, raw| raw.map(|m| msg(num(&m) * 10 + 2)).boxed());
    let mut sub = bus.subscribe(&ch, 8).await.unwrap();
    local.publish(&ch, msg(9)).await.unwrap();
    // The second (inner) interceptor saw the raw message first.
    assert_eq!(num(&recv(&mut sub).await), 921);
}

#[tokio::test(start_paused = true)]
async fn subscribe_interceptor_drops_and_reorders() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).subscribe_interceptor(|_, raw| {
        raw.filter(|m| std::future::ready(num(m) != 0))
            // Swaps every pair.
            .chunks(2)
            .flat_map(|mut pair| {
                pair.reverse();
                futures::stream::iter(pair)
            })
            .boxed()
    });
    let mut sub = bus.subscribe(&ch, 16).await.unwrap();
    for n in [1, 0, 2, 3, 0, 4] {
        local.publish(&ch, msg(n)).await.unwrap();
    }
    assert_eq!(
        drain(&mut sub, Duration::from_millis(50)).await,
        [2, 1, 4, 3]
    );
}

#[tokio::test(start_paused = true)]
async fn subscribe_interceptor_delays() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).subscribe_interceptor(|_, raw| {
        raw.then(|m| async move {
            tokio::time::sleep(Duration::from_millis(80)).await;
            m
        })
        .boxed()
    });
    let mut sub = bus.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    local.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(num(&recv(&mut sub).await), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(80));
}

#[tokio::test]
async fn subscribe_interceptor_sees_every_kind_of_subscription() {
    let local = LocalBus::new();
    let ch = channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = TestBus::new(local.clone()).subscribe_interceptor({
        let seen = seen.clone();
        move |info, raw| {
            seen.lock()
                .unwrap()
                .push((info.channel.legacy.clone(), info.queue));
            raw.map(|m| msg(num(&m) + 1)).boxed()
        }
    });
    let mut fanout = bus.subscribe(&ch, 8).await.unwrap();
    let mut queue = bus.subscribe_queue(&ch, 8).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |m| {
        let _ = tx.send(num(&m));
    });
    let _h = bus.subscribe_handler(&ch, 8, false, handler).await.unwrap();
    local.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(num(&recv(&mut fanout).await), 2);
    assert_eq!(num(&recv(&mut queue).await), 2);
    assert_eq!(timeout(WAIT, rx.recv()).await.unwrap(), Some(2));
    let l = ch.legacy.clone();
    assert_eq!(
        *seen.lock().unwrap(),
        [(l.clone(), false), (l.clone(), true), (l, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn ending_stream_closes_and_closing_unsubscribes() {
    let local = LocalBus::new();
    let ch = channel();
    let bus = TestBus::new(local.clone()).subscribe_interceptor(|_, raw| raw.take(1).boxed());
    let mut sub = bus.subscribe(&ch, 8).await.unwrap();
    local.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(num(&recv(&mut sub).await), 1);
    assert_eq!(timeout(WAIT, sub.recv()).await.unwrap(), None);

    // A closed queue member leaves the queue of the wrapped bus.
    let bus = TestBus::new(local.clone()).subscribe_interceptor(|_, raw| raw);
    let q = channel();
    let mut wrapped = bus.subscribe_queue(&q, 8).await.unwrap();
    let mut plain = local.subscribe_queue(&q, 8).await.unwrap();
    wrapped.close();
    // The wrapped member leaves the wrapped bus's queue once its
    // forwarding ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while local.listeners(&q).await.unwrap() != Some(1) {
        assert!(Instant::now() < deadline, "the closed member never left");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 0..4 {
        local.publish(&q, msg(n)).await.unwrap();
    }
    assert_eq!(
        drain(&mut plain, Duration::from_millis(50)).await,
        [0, 1, 2, 3]
    );
}

// ----------------------------------------------------------------- LaggyBus

/// a -> b 100 ms, a -> c 300 ms, everything else 10 ms.
fn latency(from: &str, to: &str) -> Duration {
    Duration::from_millis(match (from, to) {
        ("a", "b") => 100,
        ("a", "c") => 300,
        _ => 10,
    })
}

/// Checks a delay. The tests that use it run in paused time, where a delay
/// never comes out long, whatever the machine's load; it can come out
/// short by the real time the bus took to hand the message on (the laggy
/// bus counts from the wall-clock send time), so the lower bounds are
/// about half the link's latency.
fn assert_between(d: Duration, lo_ms: u64, hi_ms: u64) {
    assert!(
        d >= Duration::from_millis(lo_ms) && d <= Duration::from_millis(hi_ms),
        "{d:?} not within {lo_ms}..={hi_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn laggy_delays_per_link() {
    let local = LocalBus::new();
    let ch = channel();
    let a = LaggyBus::new(local.clone(), "a", latency);
    let b = LaggyBus::new(local.clone(), "b", latency);
    let c = LaggyBus::new(local.clone(), "c", latency);
    let mut sb = b.subscribe(&ch, 8).await.unwrap();
    let mut sc = c.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    a.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(recv(&mut sb).await, msg(1));
    assert_between(start.elapsed(), 50, 200);
    assert_eq!(recv(&mut sc).await, msg(1));
    assert_between(start.elapsed(), 150, 400);

    // The other way round, the default 10 ms.
    let mut sa = a.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    c.publish(&ch, msg(2)).await.unwrap();
    assert_eq!(recv(&mut sa).await, msg(2));
    assert_between(start.elapsed(), 0, 100);
}

#[tokio::test]
async fn laggy_reorders_when_latencies_differ() {
    let local = LocalBus::new();
    let ch = channel();
    let lat = |from: &str, _to: &str| Duration::from_millis(if from == "slow" { 200 } else { 20 });
    let slow = LaggyBus::new(local.clone(), "slow", lat);
    let fast = LaggyBus::new(local.clone(), "fast", lat);
    let r = LaggyBus::new(local.clone(), "r", lat);
    let mut sub = r.subscribe(&ch, 8).await.unwrap();
    slow.publish(&ch, msg(1)).await.unwrap();
    slow.publish(&ch, msg(2)).await.unwrap();
    fast.publish(&ch, msg(3)).await.unwrap();
    fast.publish(&ch, msg(4)).await.unwrap();
    let got: Vec<u32> = [
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ]
    .iter()
    .map(num)
    .collect();
    // Overtaken, but each link keeps its own order.
    assert_eq!(got, [3, 4, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn laggy_works_in_paused_time() {
    let local = LocalBus::new();
    let ch = channel();
    let lat = |_: &str, _: &str| Duration::from_secs(60);
    let a = LaggyBus::new(local.clone(), "a", lat);
    let b = LaggyBus::new(local.clone(), "b", lat);
    let mut sub = b.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    a.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(61), sub.recv()).await.unwrap(),
        Some(msg(1))
    );
    // Paused time moves on to the due time; the wall clock barely moved.
    assert_between(start.elapsed(), 59_000, 60_002);
}

#[tokio::test(start_paused = true)]
async fn laggy_queue_and_handler_subscriptions_are_delayed() {
    let local = LocalBus::new();
    let ch = channel();
    let a = LaggyBus::new(local.clone(), "a", latency);
    let b = LaggyBus::new(local.clone(), "b", latency);
    let mut q = b.subscribe_queue(&ch, 8).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |m| {
        let _ = tx.send(m);
    });
    let _h = b.subscribe_handler(&ch, 8, false, handler).await.unwrap();
    let start = Instant::now();
    a.publish(&ch, msg(5)).await.unwrap();
    assert_eq!(recv(&mut q).await, msg(5));
    assert_between(start.elapsed(), 50, 200);
    assert_eq!(timeout(WAIT, rx.recv()).await.unwrap(), Some(msg(5)));
    assert_between(start.elapsed(), 50, 200);
}

#[tokio::test]
async fn laggy_wire_form_is_gos() {
    let local = LocalBus::new();
    let ch = channel();
    let a = LaggyBus::new(local.clone(), "node-a", latency);
    let mut raw = local.subscribe(&ch, 8).await.unwrap();
    let before = wire::now_ns();
    a.publish(&ch, msg(1)).await.unwrap();
    let m = wire::decode_msg(recv(&mut raw).await).unwrap();
    assert_eq!(m.type_url, LAGGY_TYPE_URL);
    assert_eq!(m.type_url, "type.googleapis.com/testutils.LaggyMessage");
    let l = LaggyMessage::decode(m.value).unwrap();
    assert_eq!(l.origin, "node-a");
    assert!(l.sent_at >= before && l.sent_at <= wire::now_ns());
    // The body is the published Msg, which reads as a google.protobuf.Any.
    assert_eq!(l.body, msg(1));
    let any = prost_types::Any::decode(l.body).unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/test.N");
    assert_eq!(any.value, 1u32.to_be_bytes());
}

#[tokio::test]
async fn laggy_subscription_ends_on_a_plain_message() {
    let local = LocalBus::new();
    let ch = channel();
    let b = LaggyBus::new(local.clone(), "b", latency);
    let mut sub = b.subscribe(&ch, 8).await.unwrap();
    local.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(timeout(WAIT, sub.recv()).await.unwrap(), None);
}

// ------------------------------------------------------------ UnreliableBus

async fn publish_all(bus: &impl MessageBus, ch: &Channel, ns: std::ops::Range<u32>) {
    for n in ns {
        bus.publish(ch, msg(n)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn unreliable_drops_the_rate_deterministically() {
    let local = LocalBus::new();
    let ch = channel();
    let rate = Arc::new(FailureRate::new(0.3));
    let bus = UnreliableBus::new(local.clone(), rate);
    let mut s1 = bus.subscribe(&ch, 4096).await.unwrap();
    let mut s2 = bus.subscribe(&ch, 4096).await.unwrap();
    publish_all(&local, &ch, 0..2000).await;
    let got1 = drain(&mut s1, Duration::from_millis(100)).await;
    let got2 = drain(&mut s2, Duration::from_millis(100)).await;
    let dropped = 2000 - got1.len();
    assert!((500..=700).contains(&dropped), "dropped {dropped} of 2000");
    assert!(got1.windows(2).all(|w| w[0] < w[1]), "order kept");
    // Both subscriptions draw the same sequence (seeded with 0).
    assert_eq!(got1, got2);

    // And so does a fresh subscription on a fresh bus, over the same messages.
    let local = LocalBus::new();
    let bus = UnreliableBus::new(local.clone(), Arc::new(FailureRate::new(0.3)));
    let mut s3 = bus.subscribe_queue(&ch, 4096).await.unwrap();
    publish_all(&local, &ch, 0..2000).await;
    assert_eq!(drain(&mut s3, Duration::from_millis(100)).await, got1);
}

#[tokio::test(start_paused = true)]
async fn unreliable_rate_zero_drops_none_and_one_drops_all() {
    let local = LocalBus::new();
    let ch = channel();
    let none = UnreliableBus::new(local.clone(), Arc::new(FailureRate::new(0.0)));
    let all = UnreliableBus::new(local.clone(), Arc::new(FailureRate::new(1.0)));
    let mut kept = none.subscribe(&ch, 512).await.unwrap();
    let mut lost = all.subscribe(&ch, 512).await.unwrap();
    publish_all(&local, &ch, 0..300).await;
    assert_eq!(
        drain(&mut kept, Duration::from_millis(100)).await,
        (0..300).collect::<Vec<_>>()
    );
    nothing_within(&mut lost, Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn unreliable_rate_changes_while_running() {
    let local = LocalBus::new();
    let ch = channel();
    let rate = Arc::new(FailureRate::new(1.0));
    let bus = UnreliableBus::new(local.clone(), rate.clone());
    let mut sub = bus.subscribe(&ch, 256).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let handler: Handler = {
        let count = count.clone();
        Arc::new(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        })
    };
    let _h = bus
        .subscribe_handler(&ch, 256, true, handler)
        .await
        .unwrap();

    publish_all(&local, &ch, 0..50).await;
    nothing_within(&mut sub, Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0);

    rate.set(0.0); // recovery
    publish_all(&local, &ch, 50..100).await;
    assert_eq!(
        drain(&mut sub, Duration::from_millis(100)).await,
        (50..100).collect::<Vec<_>>()
    );
    assert_eq!(count.load(Ordering::SeqCst), 50);

    rate.set(1.0); // outage again
    publish_all(&local, &ch, 100..150).await;
    nothing_within(&mut sub, Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 50);
}

#[tokio::test(start_paused = true)]
async fn unreliable_filter_limits_loss_to_one_channel() {
    let local = LocalBus::new();
    let (lossy, fine) = (channel(), channel());
    let rate = Arc::new(FailureRate::new(1.0));
    let bus = UnreliableBus::for_channel(local.clone(), rate, lossy.legacy.clone());
    let mut s_lossy = bus.subscribe(&lossy, 64).await.unwrap();
    let mut s_fine = bus.subscribe(&fine, 64).await.unwrap();
    publish_all(&local, &lossy, 0..20).await;
    publish_all(&local, &fine, 0..20).await;
    nothing_within(&mut s_lossy, Duration::from_millis(100)).await;
    assert_eq!(
        drain(&mut s_fine, Duration::from_millis(100)).await,
        (0..20).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn wrappers_nest() {
    let local = LocalBus::new();
    let ch = channel();
    let rate = Arc::new(FailureRate::new(0.0));
    let a = LaggyBus::new(local.clone(), "a", latency);
    let b = UnreliableBus::new(LaggyBus::new(local.clone(), "b", latency), rate.clone());
    let mut sub = b.subscribe(&ch, 8).await.unwrap();
    let start = Instant::now();
    a.publish(&ch, msg(1)).await.unwrap();
    assert_eq!(recv(&mut sub).await, msg(1));
    assert_between(start.elapsed(), 50, 200);
    rate.set(1.0);
    a.publish(&ch, msg(2)).await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(300)).await;

    // The same in one TestBus.
    let rate = Arc::new(FailureRate::new(1.0));
    let c = TestBus::new(local.clone())
        .laggy("c", latency)
        .unreliable(rate.clone());
    let mut sub = c.subscribe(&ch, 8).await.unwrap();
    a.publish(&ch, msg(3)).await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(400)).await;
    rate.set(0.0);
    a.publish(&ch, msg(4)).await.unwrap();
    assert_eq!(recv(&mut sub).await, msg(4));
}
