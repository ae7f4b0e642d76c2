//! The NATS bus at the edges of what the broker takes: names longer than the
//! server's control line, client ids NATS reads as syntax, payloads over
//! `max_payload`, several server URLs, and a broker that goes away.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psrpc::drops::DropReason;
use psrpc::protocol::wire::{self, Request};
use psrpc::{ClientOptions, ErrorCode, MessageBus, RpcClient, RpcServer};
use psrpc_nats::NatsBus;
use psrpc_tests::Num;
use psrpc_tests::my_service::*;

use common::NatsServer;

const PATIENCE: Duration = Duration::from_secs(20);

async fn bus(url: &str) -> NatsBus {
    NatsBus::connect(url).await.expect("connect")
}

async fn echo_server(b: NatsBus, id: &str, topic: &[String]) -> psrpc::Result<RpcServer> {
    psrpc_tests::echo_server(Arc::new(b), id, topic).await
}

async fn client(b: NatsBus) -> RpcClient {
    RpcClient::new(Arc::new(b), SERVICE, ClientOptions::default())
        .await
        .unwrap()
}

use psrpc_tests::call_normal as call;

/// Waits until `f` holds, failing after [`PATIENCE`].
async fn until(what: &str, f: impl AsyncFnMut() -> bool) {
    psrpc_tests::eventually_async(what, PATIENCE, f).await
}

fn connects(b: &NatsBus) -> u64 {
    b.client().statistics().connects.load(Ordering::Relaxed)
}

/// A request whose client id is 5,000 bytes, published by hand: answering
/// it would need a reply subject longer than nats-server's control line,
/// which makes the server close the connection. Each server drops it
/// instead (counted), keeps its connection and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_client_id_is_dropped_and_servers_stay_connected() {
    let ns = NatsServer::start(&[]);
    let (b1, b2) = (bus(&ns.url()).await, bus(&ns.url()).await);
    let s1 = echo_server(b1.clone(), "s1", &[]).await.unwrap();
    let s2 = echo_server(b2.clone(), "s2", &[]).await.unwrap();
    let c = client(bus(&ns.url()).await).await;
    assert_eq!(call(&c, vec![], 1, String::new()).await.unwrap().n, 1);

    let raw = async_nats::connect(ns.url()).await.unwrap();
    let now = wire::now_ns();
    let sent = 6;
    for i in 0..sent {
        let req = Request {
            request_id: format!("REQ_huge{i}"),
            client_id: "x".repeat(5_000),
            sent_at: now,
            expiry: now + 10_000_000_000,
            raw_request: Bytes::from(prost::Message::encode_to_vec(&Num {
                n: i,
                text: String::new(),
            })),
            ..Default::default()
        };
        let msg = wire::append_channel(&wire::encode_msg(&req), "NormalRPC.REQ");
        raw.publish("SRV.MyService.Q", msg).await.unwrap();
    }
    raw.flush().await.unwrap();

    let dropped = || {
        b1.drops().count(DropReason::InvalidChannel) + b2.drops().count(DropReason::InvalidChannel)
    };
    until("the requests to be dropped", async || {
        dropped() == sent as u64
    })
    .await;
    for i in 0..20 {
        assert_eq!(call(&c, vec![], i, String::new()).await.unwrap().n, i);
    }
    assert_eq!(
        (connects(&b1), connects(&b2)),
        (1, 1),
        "a server reconnected"
    );
    assert!(b1.is_connected() && b2.is_connected());
    s1.shutdown().await;
    s2.shutdown().await;
}

/// A topic whose subject is longer than the control line (700 characters
/// that sanitising turns into 6 bytes each): registering and calling fail
/// at once with `invalid_argument` naming the limit, nothing is sent, and
/// both connections stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_topics_fail_fast() {
    let ns = NatsServer::start(&[]);
    let (sb, cb) = (bus(&ns.url()).await, bus(&ns.url()).await);
    let long = [vec!["-".repeat(700)], vec!["t".repeat(10_000)]];
    let sent = |b: &NatsBus| b.client().statistics().out_messages.load(Ordering::Relaxed);
    let before = sent(&sb);
    for topic in &long {
        let Err(e) = echo_server(sb.clone(), "s", topic).await else {
            panic!("a topic of {} bytes was registered", topic[0].len());
        };
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(e.message().contains("4096"), "{e}");
    }
    assert_eq!(before, sent(&sb), "something was sent");
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(cb.clone()).await;
    let out = sent(&cb);
    for topic in long {
        let t = Instant::now();
        let e = call(&c, topic, 1, String::new()).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "not at once");
    }
    assert_eq!(out, sent(&cb), "something was published");
    assert_eq!(call(&c, vec![], 2, String::new()).await.unwrap().n, 2);
    assert_eq!(
        (connects(&sb), connects(&cb)),
        (1, 1),
        "a connection was lost"
    );
    s.shutdown().await;
}

/// Client ids that are NATS wildcards (or add tokens) are refused: `*`
/// would receive every other client's responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_client_ids_refused() {
    let ns = common::shared();
    for id in ["*", ">", "a.b", "a b", ""] {
        let r = RpcClient::new(
            Arc::new(bus(&ns.url()).await),
            SERVICE,
            ClientOptions::default().client_id(id),
        )
        .await;
        let e = r.err().unwrap_or_else(|| panic!("{id:?} accepted"));
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{id:?}: {e}");
    }
}

/// A call over the server's `max_payload` fails at once with
/// `resource_exhausted` (not retried by default), and nothing else suffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_call_is_resource_exhausted() {
    let ns = NatsServer::start(&[]);
    let (sb, cb) = (bus(&ns.url()).await, bus(&ns.url()).await);
    let max = cb.max_message_size();
    assert_eq!(max, 1024 * 1024, "nats-server's default max_payload");
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(cb.clone()).await;
    let t = Instant::now();
    let e = call(&c, vec![], 1, "x".repeat(max + 1)).await.unwrap_err();
    eprintln!("oversized call failed after {:?}: {e}", t.elapsed());
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    assert!(!psrpc::middleware::retry::is_retryable(&e));
    assert_eq!(call(&c, vec![], 2, String::new()).await.unwrap().n, 2);
    assert_eq!((connects(&sb), connects(&cb)), (1, 1));
    s.shutdown().await;
}

/// A response over the server's own limit (its bus allows less than the
/// client's) cannot be published: the caller gets `resource_exhausted` at
/// once, from the small error response the server sends instead, rather
/// than waiting for its deadline; the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_is_resource_exhausted_at_once() {
    let ns = NatsServer::start(&[]);
    let sb = NatsBus::builder()
        .max_message_size(4_096)
        .connect(&ns.url())
        .await
        .expect("connect");
    let s = RpcServer::new(Arc::new(sb), SERVICE, psrpc::ServerOptions::default())
        .await
        .unwrap();
    s.route(&NORMAL_RPC)
        .handle(|_c: psrpc::Context, r: Num| async move {
            let len = usize::try_from(r.n).unwrap_or(0);
            Ok(Num {
                n: r.n,
                text: "x".repeat(len),
            })
        })
        .await
        .unwrap();
    let c = client(bus(&ns.url()).await).await;
    let big = c
        .unary(
            &NORMAL_RPC,
            vec![],
            Num {
                n: 10_000,
                text: String::new(),
            },
        )
        .timeout(PATIENCE)
        .await;
    let e = big.expect_err("a 10,000-byte response over a 4,096-byte limit");
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    assert!(e.message().contains("cannot be sent"), "{e}");
    let small = c
        .unary(
            &NORMAL_RPC,
            vec![],
            Num {
                n: 10,
                text: String::new(),
            },
        )
        .timeout(PATIENCE)
        .await;
    assert_eq!(small.unwrap().text.len(), 10);
    s.shutdown().await;
}

/// A comma-separated list of URLs (and a list) connects and fails over:
/// the node the buses are on dies, calls keep working through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_lists_fail_over() {
    let mut nodes = common::cluster(2);
    let urls = format!("{},{}", nodes[0].url(), nodes[1].url());
    let list = [nodes[0].url(), nodes[1].url()];
    let sb = NatsBus::builder()
        .connect_with_options(
            &urls,
            async_nats::ConnectOptions::new().retain_servers_order(),
        )
        .await
        .expect("comma-separated urls");
    let cb = NatsBus::builder()
        .connect_urls(&list)
        .await
        .expect("url list");
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(cb.clone()).await;
    until("a first call", async || {
        call(&c, vec![], 1, String::new()).await.is_ok()
    })
    .await;
    nodes[0].stop();
    until("the server's bus to move to the other node", async || {
        sb.is_connected() && sb.reconnects() >= 1
    })
    .await;
    until("calls through the other node", async || {
        call(&c, vec![], 2, String::new()).await.is_ok()
    })
    .await;
    for i in 0..10 {
        assert_eq!(call(&c, vec![], i, String::new()).await.unwrap().n, i);
    }
    s.shutdown().await;
}

/// With the broker down the bus says so: the state reads disconnected, a
/// call fails with `unavailable` naming the outage; after the restart the
/// state reads connected again and calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported() {
    let mut ns = NatsServer::start(&[]);
    let (sb, cb) = (bus(&ns.url()).await, bus(&ns.url()).await);
    let s = echo_server(sb.clone(), "s", &[]).await.unwrap();
    let c = client(cb.clone()).await;
    assert!(cb.is_connected());
    let mut watch = cb.watch_connected();
    assert!(*watch.borrow_and_update());
    ns.stop();
    until("the bus to notice", async || !cb.is_connected()).await;
    let e = call(&c, vec![], 1, String::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.message().contains("disconnected"), "{e}");
    until("the watch to say so", async || !*watch.borrow()).await;
    ns.restart();
    until("the bus to reconnect", async || cb.is_connected()).await;
    assert!(cb.reconnects() >= 1);
    until("a call after the restart", async || {
        call(&c, vec![], 2, String::new()).await.is_ok()
    })
    .await;
    s.shutdown().await;
}
