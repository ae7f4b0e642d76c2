//! Redis-specific behaviours of Go's Redis bus tests, the exact names seen
//! by the server, authentication, prefixes, restarts and bursts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use psrpc::bus::RawSubscription;
use psrpc::protocol::wire;
use psrpc::{
    Channel, ClientOptions, Context, ErrorCode, MessageBus, Method, RpcClient, RpcServer,
    ServerOptions,
};
use psrpc_redis::{RedisBus, queue_lock_key};
use psrpc_tests::Num;

use common::RedisServer;

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

fn ch(name: &str) -> Channel {
    Channel {
        legacy: name.into(),
        server: String::new(),
        local: String::new(),
    }
}

fn string_msg(s: &str) -> Bytes {
    wire::encode_msg_raw(STRING_VALUE, &prost_types_string(s))
}

fn prost_types_string(s: &str) -> Vec<u8> {
    s.to_string().encode_to_vec()
}

fn decode_string(b: Bytes) -> String {
    let msg = wire::decode_msg(b).expect("Msg");
    assert_eq!(msg.type_url, STRING_VALUE);
    String::decode(msg.value.as_ref()).expect("StringValue")
}

async fn recv(sub: &mut RawSubscription, within: Duration) -> Option<Bytes> {
    tokio::time::timeout(within, sub.recv())
        .await
        .ok()
        .flatten()
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// R1: a message published by one bus is received by another's subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_published_messages_are_received() {
    let server = RedisServer::start();
    let b0 = RedisBus::connect(&server.url()).await.unwrap();
    let b1 = RedisBus::connect(&server.url()).await.unwrap();
    let mut sub = b0.subscribe(&ch("test"), 100).await.unwrap();
    b1.publish(&ch("test"), string_msg("test")).await.unwrap();
    let got = recv(&mut sub, Duration::from_secs(3))
        .await
        .expect("received");
    assert_eq!(decode_string(got), "test");
}

/// R2: two buses queue-subscribed: exactly one receives, and the lock key is
/// the Go one (base64 of the payload's SHA-256) with a 5 s expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_queue_only_one_receives_and_lock_key_is_go_one() {
    let server = RedisServer::start();
    let b0 = RedisBus::connect(&server.url()).await.unwrap();
    let b1 = RedisBus::connect(&server.url()).await.unwrap();
    let b2 = RedisBus::connect(&server.url()).await.unwrap();
    let mut s1 = b1.subscribe_queue(&ch("test"), 100).await.unwrap();
    let mut s2 = b2.subscribe_queue(&ch("test"), 100).await.unwrap();
    let payload = string_msg("test");
    b0.publish(&ch("test"), payload.clone()).await.unwrap();
    let (r1, r2) = tokio::join!(
        recv(&mut s1, Duration::from_secs(1)),
        recv(&mut s2, Duration::from_secs(1))
    );
    assert_eq!(r1.is_some() as u8 + r2.is_some() as u8, 1);
    assert_eq!(decode_string(r1.or(r2).unwrap()), "test");

    let key = queue_lock_key(&payload);
    assert_eq!(key.len(), 44);
    let mut conn = raw(&server).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=5).contains(&ttl), "ttl {ttl}");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    value.parse::<i64>().expect("random integer");
}

/// The lock key matches an independent computation (a known vector).
#[test]
fn lock_key_vector() {
    // echo -n test | openssl dgst -sha256 -binary | base64
    assert_eq!(
        queue_lock_key(b"test"),
        "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
    );
}

/// R3: a closed subscription reads closed; the other still gets messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_closed_subscriptions_are_unreadable() {
    let server = RedisServer::start();
    let b0 = RedisBus::connect(&server.url()).await.unwrap();
    let b1 = RedisBus::connect(&server.url()).await.unwrap();
    let b2 = RedisBus::connect(&server.url()).await.unwrap();
    let mut s1 = b1.subscribe(&ch("test"), 100).await.unwrap();
    let mut s2 = b2.subscribe(&ch("test"), 100).await.unwrap();
    b0.publish(&ch("test"), string_msg("test")).await.unwrap();
    assert!(recv(&mut s1, Duration::from_secs(3)).await.is_some());
    assert!(recv(&mut s2, Duration::from_secs(3)).await.is_some());
    s1.close();
    b0.publish(&ch("test"), string_msg("test")).await.unwrap();
    assert!(s1.recv().await.is_none());
    assert!(recv(&mut s2, Duration::from_secs(3)).await.is_some());
}

async fn server_channels(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(conn)
        .await
        .unwrap();
    v.sort();
    v
}

/// The channel name on Redis is the legacy name (after the prefix), the
/// payload is the bytes as given, and the channel is unsubscribed when its
/// last local subscription closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_on_the_server() {
    let server = RedisServer::start();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    let prefixed = RedisBus::builder()
        .prefix("dep1:")
        .connect(&server.url())
        .await
        .unwrap();
    assert_eq!(prefixed.prefix(), "dep1:");
    let mut conn = raw(&server).await;

    // A raw subscriber sees what the bus publishes, on the exact names.
    let mut ps = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    ps.subscribe("a|b").await.unwrap();
    ps.subscribe("dep1:a|b").await.unwrap();
    bus.publish(&ch("a|b"), Bytes::from_static(b"plain"))
        .await
        .unwrap();
    prefixed
        .publish(&ch("a|b"), Bytes::from_static(b"prefixed"))
        .await
        .unwrap();
    // Two connections publish: the two messages may arrive in either order.
    let mut stream = ps.on_message();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap();
        got.push((
            m.get_channel_name().to_owned(),
            m.get_payload_bytes().to_vec(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("a|b".to_owned(), b"plain".to_vec()),
            ("dep1:a|b".to_owned(), b"prefixed".to_vec())
        ]
    );
    drop(stream);

    // Subscriptions: one SUBSCRIBE per channel, gone with the last subscriber.
    let s1 = bus.subscribe(&ch("x|y"), 10).await.unwrap();
    let s2 = bus.subscribe_queue(&ch("x|y"), 10).await.unwrap();
    let s3 = prefixed.subscribe(&ch("x|y"), 10).await.unwrap();
    let all = ["a|b", "dep1:a|b", "dep1:x|y", "x|y"];
    assert_eq!(server_channels(&mut conn).await, all);
    // Both local subscriptions of "x|y" share the bus's one pub/sub connection.
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("x|y")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(s1);
    drop(s3);
    let gone = |want: Vec<&'static str>| {
        let mut conn = conn.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = server_channels(&mut conn).await;
                if got == want {
                    return;
                }
                assert!(Instant::now() < deadline, "{got:?} != {want:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    gone(vec!["a|b", "dep1:a|b", "x|y"]).await;
    drop(s2);
    gone(vec!["a|b", "dep1:a|b"]).await;
}

/// Malformed bytes published raw reach bus subscribers untouched and break
/// nothing: an RPC server on the channel keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_do_not_panic() {
    let server = RedisServer::start();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    let mut sub = bus.subscribe(&ch("junk"), 10).await.unwrap();
    let mut q = bus.subscribe_queue(&ch("junk"), 10).await.unwrap();
    let mut conn = raw(&server).await;
    for junk in [
        &b""[..],
        b"\xff\xff\xff",
        b"\x0a\x80",
        b"not a proto at all",
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("junk")
            .arg(junk)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(recv(&mut sub, Duration::from_secs(3)).await.unwrap(), junk);
        assert_eq!(recv(&mut q, Duration::from_secs(3)).await.unwrap(), junk);
    }

    // Junk on every channel of an RPC server, then a call still works.
    let (srv, client) = rpc_pair(&bus, &bus, "junk_svc").await;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .unwrap();
    for c in channels {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&c)
            .arg(&b"\x0a\x05\xff\xff"[..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let res: Num = client
        .unary(
            &ECHO,
            (),
            Num {
                n: 7,
                text: "x".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(res.n, 7);
    drop(srv);
}

const ECHO: Method<Num, Num> = Method::queue("Echo");

async fn rpc_pair(sb: &RedisBus, cb: &RedisBus, service: &str) -> (RpcServer, RpcClient) {
    let srv = RpcServer::new(
        sb.clone(),
        service,
        ServerOptions::default().server_id("s1"),
    )
    .await
    .unwrap();
    srv.route(&ECHO)
        .handle(|_ctx: Context, req: Num| async move { Ok(req) })
        .await
        .unwrap();
    let client = RpcClient::new(cb.clone(), service, ClientOptions::default())
        .await
        .unwrap();
    (srv, client)
}

/// A password-protected server: no password fails at construction with a
/// clear `unavailable` error; with it, calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_server() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let err = RedisBus::connect(&server.url()).await.unwrap_err();
    assert!(
        matches!(&err, psrpc_redis::Error::Connect { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Unavailable);
    // The psrpc error keeps the chain down to redis' own error.
    let err = psrpc::Error::from(err);
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.message().contains("redis"), "{}", err.message());
    assert!(
        err.message().to_lowercase().contains("auth"),
        "{}",
        err.message()
    );
    let ours = std::error::Error::source(&err).expect("the bus's error");
    let theirs = ours.source().expect("redis' error");
    assert!(theirs.is::<redis::RedisError>(), "{theirs:?}");
    let bad = format!("redis://:wrong@127.0.0.1:{}", server.port);
    let err = RedisBus::connect(&bad).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.redis_error().is_some(), "{err:?}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port);
    let sb = RedisBus::connect(&url).await.unwrap();
    let cb = RedisBus::connect(&url).await.unwrap();
    let (_srv, client) = rpc_pair(&sb, &cb, "auth_svc").await;
    let res: Num = client
        .unary(
            &ECHO,
            (),
            Num {
                n: 1,
                text: "pw".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(res.text, "pw");
}

/// An unreachable server fails at construction with `unavailable`.
#[tokio::test]
async fn unreachable_server_fails_at_construction() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let start = Instant::now();
    let err = RedisBus::connect(&url).await.unwrap_err();
    assert!(matches!(err, psrpc_redis::Error::Connect { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(start.elapsed() < Duration::from_secs(5));
    // Bad input is the caller's to fix: `invalid_argument`, not retried.
    let err = RedisBus::connect("not a url").await.unwrap_err();
    assert!(
        matches!(err, psrpc_redis::Error::InvalidUrl { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.redis_error().is_some());
}

/// Two prefixes on one Redis never hear each other, fan-out or queue, bus
/// or RPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_are_isolated() {
    let server = RedisServer::start();
    let a = RedisBus::builder()
        .prefix("a:")
        .connect(&server.url())
        .await
        .unwrap();
    let b = RedisBus::builder()
        .prefix("b:")
        .connect(&server.url())
        .await
        .unwrap();
    let mut sa = a.subscribe(&ch("shared"), 10).await.unwrap();
    let mut sb = b.subscribe(&ch("shared"), 10).await.unwrap();
    let mut qa = a.subscribe_queue(&ch("q"), 10).await.unwrap();
    let mut qb = b.subscribe_queue(&ch("q"), 10).await.unwrap();
    a.publish(&ch("shared"), Bytes::from_static(b"for a"))
        .await
        .unwrap();
    b.publish(&ch("shared"), Bytes::from_static(b"for b"))
        .await
        .unwrap();
    a.publish(&ch("q"), Bytes::from_static(b"qa"))
        .await
        .unwrap();
    b.publish(&ch("q"), Bytes::from_static(b"qb"))
        .await
        .unwrap();
    let w = Duration::from_secs(3);
    assert_eq!(recv(&mut sa, w).await.unwrap(), "for a");
    assert_eq!(recv(&mut sb, w).await.unwrap(), "for b");
    assert_eq!(recv(&mut qa, w).await.unwrap(), "qa");
    assert_eq!(recv(&mut qb, w).await.unwrap(), "qb");
    let short = Duration::from_millis(200);
    for s in [&mut sa, &mut sb, &mut qa, &mut qb] {
        assert!(recv(s, short).await.is_none());
    }

    // The same service under both prefixes: each client reaches its own server.
    let (_s1, c1) = rpc_pair(&a, &a, "svc").await;
    let count = Arc::new(AtomicUsize::new(0));
    let srv_b = RpcServer::new(b.clone(), "svc", ServerOptions::default().server_id("sb"))
        .await
        .unwrap();
    let n = count.clone();
    srv_b
        .route(&ECHO)
        .handle(move |_ctx: Context, req: Num| {
            n.fetch_add(1, Ordering::SeqCst);
            async move { Ok(req) }
        })
        .await
        .unwrap();
    for i in 0..5 {
        let r: Num = c1
            .unary(
                &ECHO,
                (),
                Num {
                    n: i,
                    text: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.n, i);
    }
    assert_eq!(count.load(Ordering::SeqCst), 0, "prefix b never called");
}

/// redis-server restarts: without rebuilding the client or the server, a new
/// RPC succeeds within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_server_restart() {
    let mut server = RedisServer::start();
    let sb = RedisBus::connect(&server.url()).await.unwrap();
    let cb = RedisBus::connect(&server.url()).await.unwrap();
    let (_srv, client) = rpc_pair(&sb, &cb, "restart_svc").await;
    let res: Num = client
        .unary(
            &ECHO,
            (),
            Num {
                n: 1,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(res.n, 1);

    server.restart();
    let restarted = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r: psrpc::Result<Num> = client
            .unary(
                &ECHO,
                (),
                Num {
                    n: 2,
                    text: String::new(),
                },
            )
            .timeout(Duration::from_millis(500))
            .await;
        match r {
            Ok(r) => {
                assert_eq!(r.n, 2);
                break;
            }
            Err(e) => assert!(
                restarted.elapsed() < Duration::from_secs(8),
                "no recovery after {attempts} attempts: {e}"
            ),
        }
    }
    assert!(restarted.elapsed() < Duration::from_secs(8));
    // And a plain subscription made before the outage works again.
    let mut sub = cb.subscribe(&ch("after"), 10).await.unwrap();
    sb.publish(&ch("after"), Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert_eq!(recv(&mut sub, Duration::from_secs(3)).await.unwrap(), "ok");
}

/// A subscription made before a restart hears messages after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resubscribed_after_restart() {
    let mut server = RedisServer::start();
    let sub_bus = RedisBus::connect(&server.url()).await.unwrap();
    let pub_bus = RedisBus::connect(&server.url()).await.unwrap();
    let mut sub = sub_bus.subscribe(&ch("kept"), 10).await.unwrap();
    let mut q = sub_bus.subscribe_queue(&ch("kept-q"), 10).await.unwrap();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut n = 0u32;
    loop {
        n += 1;
        let _ = pub_bus
            .publish(&ch("kept"), Bytes::from(n.to_string()))
            .await;
        if recv(&mut sub, Duration::from_millis(200)).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "never resubscribed");
    }
    let mut conn = raw(&server).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("kept-q")
        .arg("queued")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        recv(&mut q, Duration::from_secs(3)).await.unwrap(),
        "queued"
    );
}

/// 100,000 publishes on one channel arrive complete and in order at every
/// subscriber: two sharing one bus, one on another bus, one on the
/// publishing bus itself. The buffers hold the whole burst (the reader
/// never waits for a subscriber, so one that fell further behind than its
/// buffer and overflow would lose messages, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_arrives_complete_and_in_order() {
    const N: u32 = 100_000;
    let server = RedisServer::start();
    let sub_bus = RedisBus::connect(&server.url()).await.unwrap();
    let other_bus = RedisBus::connect(&server.url()).await.unwrap();
    let pub_bus = RedisBus::connect(&server.url()).await.unwrap();
    let mut subs = Vec::new();
    for b in [&sub_bus, &sub_bus, &other_bus, &pub_bus] {
        subs.push(b.subscribe(&ch("burst"), N as usize / 2).await.unwrap());
    }
    let start = Instant::now();
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(k, mut sub)| {
            tokio::spawn(async move {
                for i in 0..N {
                    let b = recv(&mut sub, Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|| panic!("subscriber {k}: message {i} missing"));
                    assert_eq!(b, i.to_be_bytes().as_slice(), "subscriber {k}: in order");
                }
            })
        })
        .collect();
    for i in 0..N {
        pub_bus
            .publish(&ch("burst"), Bytes::copy_from_slice(&i.to_be_bytes()))
            .await
            .unwrap();
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("burst within 60 s")
            .unwrap();
    }
    for b in [&sub_bus, &other_bus, &pub_bus] {
        assert_eq!(b.dropped(), 0);
    }
    eprintln!("100k burst to 4 subscribers took {:?}", start.elapsed());
}

/// A subscriber that never reads holds a burst, then, once it counts as
/// stuck, loses at once what does not fit its buffer; the others of the
/// channel get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_others() {
    let server = RedisServer::start();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    let stuck = bus.subscribe(&ch("slow"), 1).await.unwrap();
    let mut ok = bus.subscribe(&ch("slow"), 100).await.unwrap();
    for i in 0..10u8 {
        bus.publish(&ch("slow"), Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    for i in 0..10u8 {
        assert_eq!(
            recv(&mut ok, Duration::from_secs(3)).await.unwrap(),
            vec![i]
        );
    }
    // The burst is held for the stuck subscriber too (it may still read)...
    assert_eq!(stuck.len(), 10);
    // ... until it has read nothing for a while: from then on what does not
    // fit its own buffer is dropped for it alone, at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 10u8;
    while bus.dropped() == 0 {
        assert!(Instant::now() < deadline, "never dropped");
        bus.publish(&ch("slow"), Bytes::from(vec![next]))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut ok, Duration::from_secs(3)).await.unwrap(),
            vec![next]
        );
        next = next.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = stuck.len();
    let dropped = bus.dropped();
    for _ in 0..5 {
        bus.publish(&ch("slow"), Bytes::from(vec![next]))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut ok, Duration::from_secs(3)).await.unwrap(),
            vec![next]
        );
        next = next.wrapping_add(1);
    }
    psrpc_tests::eventually("the five dropped", Duration::from_secs(20), || {
        bus.dropped() == dropped + 5
    })
    .await;
    assert_eq!(stuck.len(), held);
    assert!(held <= stuck.capacity());
}

/// One call of a load worker: when it started, how long it took, and its
/// outcome.
/// redis-server is killed and started again while 16 callers keep calling
/// with a 1 s timeout: every call resolves by its deadline (with
/// `unavailable` or `deadline_exceeded` when it fails), and once the server
/// is back a new call succeeds within 2 s, without rebuilding anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_load() {
    let mut server = RedisServer::start();
    let sb = RedisBus::connect(&server.url()).await.unwrap();
    let cb = RedisBus::connect(&server.url()).await.unwrap();
    let (srv, client) = rpc_pair(&sb, &cb, "load_svc").await;
    let client = Arc::new(client);
    psrpc_tests::outage::calls_through_restart(client, &ECHO, &mut server).await;
    drop(srv);
}

/// redis-server is killed: a call fails with `unavailable` and the default
/// retry policy tries it again, as often as it allows; calls succeed once
/// the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_retry_policy_retries_an_outage() {
    let mut server = RedisServer::start();
    let sb = RedisBus::connect(&server.url()).await.unwrap();
    let cb = RedisBus::connect(&server.url()).await.unwrap();
    psrpc_tests::outage::default_retry_policy_retries_an_outage(
        Arc::new(sb),
        Arc::new(cb),
        &mut server,
    )
    .await;
}

/// A raw `PSUBSCRIBE *` sees the exact Go channel names of a queue call and
/// an affinity call on a topic (docs/PROTOCOL.md, "Channels"), payloads without `Msg.channel`,
/// and the request's Go queue lock key set on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_channel_names_and_lock_key_observed() {
    use psrpc_tests::my_service::{INTENSIVE_RPC, NORMAL_RPC, SERVICE};
    let server = RedisServer::start();
    let mut spy = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    spy.psubscribe("*").await.unwrap();
    let sb = RedisBus::connect(&server.url()).await.unwrap();
    let cb = RedisBus::connect(&server.url()).await.unwrap();
    let topic = vec!["us-east".to_string(), "room/1".to_string()];
    let srv = RpcServer::new(sb, SERVICE, ServerOptions::default().server_id("s1"))
        .await
        .unwrap();
    for m in [&NORMAL_RPC, &INTENSIVE_RPC] {
        srv.route(m)
            .topic(&topic)
            .handle(|_ctx: Context, req: Num| async move { Ok(req) })
            .await
            .unwrap();
    }
    let client = RpcClient::new(cb, SERVICE, ClientOptions::default().client_id("CLI_abc"))
        .await
        .unwrap();
    for m in [&NORMAL_RPC, &INTENSIVE_RPC] {
        let r: Num = client
            .unary(
                m,
                topic.clone(),
                Num {
                    n: 4,
                    text: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.n, 4);
    }
    let mut seen: Vec<(String, Bytes)> = Vec::new();
    let mut stream = spy.on_message();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        seen.push((
            m.get_channel_name().to_owned(),
            Bytes::copy_from_slice(m.get_payload_bytes()),
        ));
    }
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let t = "usu+002deast|roomu+002f1";
    let want = [
        format!("MyService|NormalRPC|{t}|REQ"),
        "MyService|CLI_abc|CLAIM".to_string(),
        format!("MyService|NormalRPC|{t}|RCLAIM"),
        "MyService|CLI_abc|RES".to_string(),
        format!("MyService|IntensiveRPC|{t}|REQ"),
        "MyService|CLI_abc|CLAIM".to_string(),
        format!("MyService|IntensiveRPC|{t}|RCLAIM"),
        "MyService|CLI_abc|RES".to_string(),
    ];
    assert_eq!(names, want);
    for (name, payload) in &seen {
        assert_eq!(
            wire::read_channel(payload).unwrap(),
            "",
            "{name}: no field 3"
        );
        wire::decode_msg(payload.clone()).expect("a Msg envelope");
    }
    // The queue request was locked under the Go key; the affinity request
    // (fan-out, no queue) was not.
    let mut conn = raw(&server).await;
    for (i, (_, payload)) in [&seen[0], &seen[4]].into_iter().enumerate() {
        let ttl: i64 = redis::cmd("TTL")
            .arg(queue_lock_key(payload))
            .query_async(&mut conn)
            .await
            .unwrap();
        if i == 0 {
            assert!((1..=5).contains(&ttl), "queue lock ttl {ttl}");
        } else {
            assert_eq!(ttl, -2, "no lock for a fan-out request");
        }
    }
}
