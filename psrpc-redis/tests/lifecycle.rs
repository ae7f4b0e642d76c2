//! The bus's life: options given to the builder before connecting,
//! credentials read from the URL by redis' parser, and `close`.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use psrpc::{Channel, ErrorCode, MessageBus};
use psrpc_redis::RedisBus;
use psrpc_tests::servers::RedisServer;

const PATIENCE: Duration = Duration::from_secs(20);

fn ch(name: &str) -> Channel {
    Channel {
        legacy: name.into(),
        server: String::new(),
        local: String::new(),
    }
}

async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> usize {
    let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    counts[0].1
}

/// `close` sends every publish queued before it (a raw subscriber gets all
/// of them), leaves no subscription on the server, ends the bus's
/// subscriptions, and every later call on the bus or a clone fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_unsubscribes_and_refuses_later_calls() {
    const N: usize = 2_000;
    let server = RedisServer::start();
    let raw = redis::Client::open(server.url()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    let mut ps = raw.get_async_pubsub().await.unwrap();

    let bus = RedisBus::builder()
        .prefix("app:")
        .connect(&server.url())
        .await
        .unwrap();
    let clone = bus.clone();
    let mut fan = bus.subscribe(&ch("fan"), 10).await.unwrap();
    let mut queue = bus.subscribe_queue(&ch("queue"), 10).await.unwrap();
    assert_eq!(numsub(&mut conn, "app:fan").await, 1);
    assert_eq!(numsub(&mut conn, "app:queue").await, 1);

    let raw_out = "app:out";
    ps.subscribe(raw_out).await.unwrap();
    for i in 0..N {
        bus.publish(&ch("out"), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    bus.close().await.unwrap();
    // Nothing of the bus is subscribed any more, once `close` returned.
    assert_eq!(numsub(&mut conn, "app:fan").await, 0);
    assert_eq!(numsub(&mut conn, "app:queue").await, 0);

    // Every publish made before the close reached Redis, in order.
    let mut stream = ps.on_message();
    for i in 0..N {
        let m = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {N} not received"))
            .unwrap();
        assert_eq!(m.get_channel_name(), raw_out);
        assert_eq!(m.get_payload_bytes(), i.to_string().as_bytes());
    }
    drop(stream);

    // Its subscriptions ended.
    assert_eq!(
        tokio::time::timeout(PATIENCE, fan.recv()).await.unwrap(),
        None
    );
    assert_eq!(
        tokio::time::timeout(PATIENCE, queue.recv()).await.unwrap(),
        None
    );

    // Every later call fails, on every handle, with a clear error.
    for b in [&bus, &clone] {
        assert!(b.is_closed());
        assert!(!b.is_connected());
        let e = b
            .publish(&ch("out"), Bytes::from_static(b"late"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        assert!(e.message().contains("closed"), "{e}");
        let e = b.subscribe(&ch("fan"), 10).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        let e = b.subscribe_queue(&ch("queue"), 10).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        let e = b.listeners(&ch("fan")).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    }
    // Closing again is harmless.
    clone.close().await.unwrap();
    assert_eq!(numsub(&mut conn, "app:fan").await, 0);
}

/// `close` with Redis gone returns all the same, and the bus is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_redis_is_down() {
    let mut server = RedisServer::start();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    let _sub = bus.subscribe(&ch("x"), 10).await.unwrap();
    server.stop();
    psrpc_tests::eventually("the bus sees the outage", PATIENCE, || !bus.is_connected()).await;
    tokio::time::timeout(PATIENCE, bus.close())
        .await
        .expect("close returns while Redis is down")
        .unwrap();
    let e = bus.publish(&ch("x"), Bytes::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
}

/// The options given to the builder hold from the first call on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_options_apply() {
    let server = RedisServer::start();
    let compression = psrpc::CompressionOptions::default().with_quality(6);
    let bus = RedisBus::builder()
        .prefix("p:")
        .max_message_size(100)
        .max_channel_len(12)
        .compression(compression)
        .connect(&server.url())
        .await
        .unwrap();
    assert_eq!(bus.prefix(), "p:");
    assert_eq!(bus.max_message_size(), 100);
    assert_eq!(bus.max_channel_len(), 12);
    assert_eq!(bus.compression(), &compression);

    let e = bus
        .publish(&ch("a"), Bytes::from(vec![0u8; 101]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    // 2 bytes of prefix + 11 of name: over 12.
    let e = bus.subscribe(&ch("abcdefghijk"), 10).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");

    let mut sub = bus.subscribe(&ch("a"), 10).await.unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(numsub(&mut raw, "p:a").await, 1);
    let _: i64 = redis::cmd("PUBLISH")
        .arg("p:a")
        .arg("hi")
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"hi"[..]));
}

/// A URL's user and password are read by redis' parser, percent-encoding
/// included: an ACL user whose password holds `@`, `:` and `/` connects; a
/// wrong password fails with redis' error as the source, and the error text
/// does not carry the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_url() {
    // One argument per word: redis-server joins them into the `user` line.
    let server = RedisServer::start_with(&[
        "--user",
        "default",
        "off",
        "--user",
        "alice",
        "on",
        ">p@ss:w/rd",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://alice:p%40ss%3Aw%2Frd@127.0.0.1:{}/0", server.port);
    let bus = RedisBus::connect(&url).await.expect("alice connects");
    let mut sub = bus.subscribe(&ch("acl"), 10).await.unwrap();
    bus.publish(&ch("acl"), Bytes::from_static(b"in"))
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"in"[..]));
    assert_eq!(bus.listeners(&ch("acl")).await.unwrap(), Some(1));

    let wrong = format!("redis://alice:secret-guess@127.0.0.1:{}", server.port);
    let e = RedisBus::connect(&wrong).await.unwrap_err();
    assert!(matches!(e, psrpc_redis::Error::Connect { .. }), "{e:?}");
    let source = e.redis_error().expect("redis' error kept");
    assert!(
        matches!(source.kind(), redis::ErrorKind::AuthenticationFailed),
        "{source}"
    );
    assert!(!format!("{e} {e:?}").contains("secret-guess"), "{e:?}");
    // Without credentials: the default user is off.
    let e = RedisBus::connect(&server.url()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
}

/// Errors of a running bus keep what caused them: a publish during an
/// outage is `unavailable` with the bus's `Disconnected` error as its
/// source, and `listeners` keeps redis' own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_errors_keep_their_source() {
    let mut server = RedisServer::start();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    server.stop();
    psrpc_tests::eventually("the bus sees the outage", PATIENCE, || !bus.is_connected()).await;
    let e = bus.publish(&ch("x"), Bytes::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    let source = std::error::Error::source(&e).expect("a source");
    let ours = source
        .downcast_ref::<psrpc_redis::Error>()
        .expect("the bus's error");
    assert!(
        matches!(ours, psrpc_redis::Error::Disconnected { .. }),
        "{ours:?}"
    );
    assert!(
        std::error::Error::source(ours).is_some(),
        "why it is down: {ours:?}"
    );

    let e = bus.listeners(&ch("x")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    let ours = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<psrpc_redis::Error>())
        .expect("the bus's error");
    assert!(ours.redis_error().is_some(), "{ours:?}");
    bus.close().await.unwrap();
}
