//! The Redis bus at the edges of what the broker takes: messages over the
//! pub/sub output buffer, names over the bus's limit, client ids other
//! buses read as syntax, and a broker that goes away.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psrpc::drops::DropReason;
use psrpc::protocol::wire::{self, Request};
use psrpc::{
    Channel, ClientOptions, Context, ErrorCode, MessageBus, RpcClient, RpcServer, ServerOptions,
};
use psrpc_redis::RedisBus;
use psrpc_tests::Num;
use psrpc_tests::my_service::*;

use common::RedisServer;

const PATIENCE: Duration = Duration::from_secs(20);

async fn bus(url: &str) -> RedisBus {
    RedisBus::connect(url).await.expect("connect")
}

async fn echo_server(b: RedisBus, id: &str, topic: &[String]) -> psrpc::Result<RpcServer> {
    psrpc_tests::echo_server(Arc::new(b), id, topic).await
}

async fn client(b: RedisBus) -> RpcClient {
    RpcClient::new(Arc::new(b), SERVICE, ClientOptions::default())
        .await
        .unwrap()
}

use psrpc_tests::call_normal as call;

/// Waits until `f` holds, failing after [`PATIENCE`].
async fn until(what: &str, f: impl AsyncFnMut() -> bool) {
    psrpc_tests::eventually_async(what, PATIENCE, f).await
}

fn ch(name: &str) -> Channel {
    Channel {
        legacy: name.into(),
        server: String::new(),
        local: String::new(),
    }
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A 40 MB call (over Redis' 32 MB pub/sub output buffer, which would make
/// Redis disconnect every subscriber) fails at once with
/// `resource_exhausted`; the servers and other subscribers keep their
/// pub/sub connections and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_call_is_resource_exhausted_and_harms_no_one() {
    let rs = RedisServer::start();
    let (sb, ob, cb) = (
        bus(&rs.url()).await,
        bus(&rs.url()).await,
        bus(&rs.url()).await,
    );
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let mut other = ob.subscribe(&ch("other"), 16).await.unwrap();
    let c = client(cb.clone()).await;
    assert_eq!(call(&c, vec![], 1, String::new()).await.unwrap().n, 1);

    let t = Instant::now();
    let e = call(&c, vec![], 2, "x".repeat(40 << 20)).await.unwrap_err();
    eprintln!("40 MB call failed after {:?}: {e}", t.elapsed());
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    assert!(!psrpc::middleware::retry::is_retryable(&e));

    for i in 0..10 {
        assert_eq!(call(&c, vec![], i, String::new()).await.unwrap().n, i);
    }
    cb.publish(&ch("other"), Bytes::from_static(b"still here"))
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, other.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"still here"[..]));
    assert_eq!(
        (sb.reconnects(), ob.reconnects(), cb.reconnects()),
        (0, 0, 0)
    );
    s.shutdown().await;
}

/// A handler whose response is over the bus's limit: the caller gets
/// `resource_exhausted` from the server at once, not a timeout at its
/// deadline, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_fails_the_call_at_once() {
    let rs = RedisServer::start();
    let (sb, cb) = (bus(&rs.url()).await, bus(&rs.url()).await);
    let s = RpcServer::new(
        Arc::new(sb),
        SERVICE,
        ServerOptions::default().server_id("big"),
    )
    .await
    .unwrap();
    s.route(&NORMAL_RPC)
        .handle(|_c: Context, r: Num| async move {
            Ok(Num {
                n: r.n,
                text: "x".repeat(r.n as usize),
            })
        })
        .await
        .unwrap();
    let c = client(cb).await;
    let big = psrpc_redis::DEFAULT_MAX_MESSAGE_SIZE as i64 + 1;
    let e = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: big,
                text: String::new(),
            },
        )
        .timeout(Duration::from_secs(30))
        .await
        .unwrap_err();
    // Not deadline_exceeded: the server said why.
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    let ok: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 3,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.text, "xxx");
    s.shutdown().await;
}

/// A message over the bus's limit published by hand is dropped by the
/// reader and counted; the next message gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_incoming_message_is_dropped() {
    let rs = RedisServer::start();
    let b = bus(&rs.url()).await;
    assert_eq!(b.max_message_size(), psrpc_redis::DEFAULT_MAX_MESSAGE_SIZE);
    let mut sub = b.subscribe(&ch("big"), 16).await.unwrap();
    let mut r = raw(&rs).await;
    let big = vec![7u8; psrpc_redis::DEFAULT_MAX_MESSAGE_SIZE + 1];
    let _: i64 = redis::cmd("PUBLISH")
        .arg("big")
        .arg(big)
        .query_async(&mut r)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("big")
        .arg(&b"small"[..])
        .query_async(&mut r)
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, sub.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"small"[..]));
    assert_eq!(b.drops().count(DropReason::TooLarge), 1);
}

/// A request whose client id would make the answer channel longer than the
/// bus's limit is dropped by the server (counted), which keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_client_id_is_dropped() {
    let rs = RedisServer::start();
    let sb = bus(&rs.url()).await;
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(bus(&rs.url()).await).await;
    let now = wire::now_ns();
    let req = Request {
        request_id: "REQ_huge".into(),
        client_id: "x".repeat(psrpc_redis::DEFAULT_MAX_CHANNEL_LEN + 1),
        sent_at: now,
        expiry: now + 10_000_000_000,
        raw_request: Bytes::from(prost::Message::encode_to_vec(&Num::default())),
        ..Default::default()
    };
    let mut r = raw(&rs).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("MyService|NormalRPC|REQ")
        .arg(&wire::encode_msg(&req)[..])
        .query_async(&mut r)
        .await
        .unwrap();
    until("the request to be dropped", async || {
        sb.drops().count(DropReason::InvalidChannel) == 1
    })
    .await;
    assert_eq!(call(&c, vec![], 3, String::new()).await.unwrap().n, 3);
    s.shutdown().await;
}

/// Names over the bus's limit fail at once with `invalid_argument`; client
/// ids that NATS would read as wildcards are refused here too, so that a
/// client works the same on every bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_over_the_limits_are_refused() {
    let rs = RedisServer::start();
    let (sb, cb) = (bus(&rs.url()).await, bus(&rs.url()).await);
    let long = vec!["t".repeat(psrpc_redis::DEFAULT_MAX_CHANNEL_LEN)];
    let Err(e) = echo_server(sb.clone(), "s", &long).await else {
        panic!("a topic over the limit was registered");
    };
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    let c = client(cb.clone()).await;
    let e = call(&c, long, 1, String::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    for id in ["*", ">", "a.b", "a b", ""] {
        let r = RpcClient::new(
            Arc::new(cb.clone()),
            SERVICE,
            ClientOptions::default().client_id(id),
        )
        .await;
        let e = r.err().unwrap_or_else(|| panic!("{id:?} accepted"));
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{id:?}: {e}");
    }
}

/// With Redis down the bus says so: the state reads disconnected and a call
/// fails with `unavailable` naming the outage; after the restart the state
/// reads connected again and calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported() {
    let mut rs = RedisServer::start();
    let (sb, cb) = (bus(&rs.url()).await, bus(&rs.url()).await);
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(cb.clone()).await;
    assert!(cb.is_connected());
    let mut watch = cb.watch_connected();
    assert!(*watch.borrow_and_update());
    rs.stop();
    until("the bus to notice", async || !cb.is_connected()).await;
    assert!(!*watch.borrow());
    let e = call(&c, vec![], 1, String::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.message().contains("disconnected"), "{e}");
    rs.restart();
    until("the bus to reconnect", async || cb.is_connected()).await;
    assert!(cb.reconnects() >= 1);
    until("a call after the restart", async || {
        call(&c, vec![], 2, String::new()).await.is_ok()
    })
    .await;
    s.shutdown().await;
}
