//! The behaviours Go psrpc's tests check (bus contract, RPC, errors, lifecycle),
//! each a function over a [`BusFactory`]. [`conformance!`](crate::conformance)
//! turns them into tests.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use psrpc::bus::DynBus;
use psrpc::protocol::channels::{self, Channel};
use psrpc::protocol::wire::{self, Request, Response};
use psrpc::{
    CallOptions, CancellationToken, ClientOptions, Context, Error, ErrorCode, GrpcCode, Method,
    RpcClient, RpcServer, SelectionOptions,
};

pub use crate::claim_skip::*;
pub use crate::compression::{
    compression_bomb_dropped_everywhere, compression_mixed_peers,
    compression_raw_gzip_request_answered,
};
pub use crate::middleware::*;
use crate::my_service::*;
pub use crate::stream_ends::*;
pub use crate::streams::*;
use crate::{BusFactory, MyRequest, MyResponse, MyUpdate, Num};

const WAIT: Duration = Duration::from_secs(3);

/// The deadline of a wait for a condition: generous, since it only bounds
/// how long a failing test takes.
const DEADLINE: Duration = Duration::from_secs(20);

/// How long a queue test gives a second member of the group to (wrongly)
/// get a message too: nothing tells the other members that one got it, so
/// only time can show that they did not (see [`crate::quiet_for`]).
const QUIET: Duration = Duration::from_millis(500);

fn raw_channel() -> Channel {
    let name = psrpc::protocol::id::new_id("");
    Channel {
        legacy: name.clone(),
        server: name,
        local: String::new(),
    }
}

async fn server(f: &dyn BusFactory, service: &str, id: &str) -> RpcServer {
    RpcServer::new(f.connect().await, service, f.server_options().server_id(id))
        .await
        .unwrap()
}

/// A [`server`] whose request events `events` records: a test waits for
/// them to know that the server is done with a request.
async fn observed_server(
    f: &dyn BusFactory,
    service: &str,
    id: &str,
    events: &Arc<Events>,
) -> RpcServer {
    let opts = f.server_options().server_id(id).interceptor(events.clone());
    RpcServer::new(f.connect().await, service, opts)
        .await
        .unwrap()
}

pub(crate) async fn client(f: &dyn BusFactory, service: &str) -> RpcClient {
    client_with(f, service, ClientOptions::default()).await
}

async fn client_with(f: &dyn BusFactory, service: &str, opts: ClientOptions) -> RpcClient {
    RpcClient::new(f.connect().await, service, opts)
        .await
        .expect("client")
}

pub(crate) async fn settle(f: &dyn BusFactory) {
    f.settle().await;
}

pub(crate) fn topic(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// Registers a handler that counts calls and answers `Num { text: server id }`.
pub(crate) async fn counting(
    s: &RpcServer,
    m: &Method<Num, Num>,
    t: &[String],
    count: Arc<AtomicUsize>,
) {
    let id = s.id().to_owned();
    s.route(m)
        .topic(t)
        .handle(move |_ctx: Context, req: Num| {
            count.fetch_add(1, Ordering::SeqCst);
            let id = id.clone();
            async move { Ok(Num { n: req.n, text: id }) }
        })
        .await
        .expect("register");
}

async fn recv_raw(sub: &mut psrpc::bus::RawSubscription, within: Duration) -> Option<Bytes> {
    tokio::time::timeout(within, sub.recv())
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------- bus (B1-B3)

/// B1: two fan-out subscriptions both get the message.
pub async fn bus_fanout_every_subscriber(f: &dyn BusFactory) {
    let bus = f.connect().await;
    let ch = raw_channel();
    let mut a = bus.subscribe(&ch, 100).await.unwrap();
    let mut b = bus.subscribe(&ch, 100).await.unwrap();
    settle(f).await;
    let req = Request {
        request_id: "1".into(),
        ..Default::default()
    };
    f.connect()
        .await
        .publish(&ch, wire::encode_msg(&req))
        .await
        .unwrap();
    for sub in [&mut a, &mut b] {
        let got = recv_raw(sub, WAIT).await.expect("message");
        let r: Request = psrpc::codec::decode_envelope(got).unwrap();
        assert_eq!(r.request_id, "1");
    }
}

/// B2: two queue subscriptions: exactly one message in total.
pub async fn bus_queue_exactly_one(f: &dyn BusFactory) {
    let ch = raw_channel();
    let mut a = f.connect().await.subscribe_queue(&ch, 100).await.unwrap();
    let mut b = f.connect().await.subscribe_queue(&ch, 100).await.unwrap();
    settle(f).await;
    // Distinct from other runs of this test: Redis drops a queue message
    // identical to one it delivered in the last 5 s, whatever the channel.
    let id = psrpc::protocol::id::new_request_id();
    let req = Request {
        request_id: id.clone(),
        ..Default::default()
    };
    f.connect()
        .await
        .publish(&ch, wire::encode_msg(&req))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut drain = |a: &mut psrpc::bus::RawSubscription, b: &mut psrpc::bus::RawSubscription| {
        for sub in [a, b] {
            while let Ok(m) = sub.try_recv() {
                got.push(m);
            }
        }
        !got.is_empty()
    };
    crate::eventually("a member gets the message", DEADLINE, || {
        drain(&mut a, &mut b)
    })
    .await;
    // The other member is told nothing: only time shows it gets nothing.
    crate::quiet_for(QUIET).await;
    drain(&mut a, &mut b);
    assert_eq!(got.len(), 1, "a queue message goes to exactly one member");
    let r: Request = psrpc::codec::decode_envelope(got.pop().unwrap()).unwrap();
    assert_eq!(r.request_id, id);
}

/// B3: a closed subscription reads as closed, without blocking.
pub async fn bus_closed_subscription_reads_closed(f: &dyn BusFactory) {
    let bus = f.connect().await;
    let ch = raw_channel();
    let mut sub = bus.subscribe(&ch, 100).await.unwrap();
    sub.close();
    // Closing takes effect at once: no wait before publishing.
    bus.publish(&ch, wire::encode_msg(&Request::default()))
        .await
        .unwrap();
    assert!(matches!(
        sub.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
    ));
    assert!(sub.recv().await.is_none());
}

// ---------------------------------------------------------------- RPC

/// TestRPC step 1: a non-queue method that requires a claim, served by two
/// servers: exactly one handles.
pub async fn rpc_queue_claimed_by_one_of_two(f: &dyn BusFactory) {
    let m = Method::affinity("add_one");
    let count = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(Events::default());
    let a = observed_server(f, "test", "A", &events).await;
    let b = observed_server(f, "test", "B", &events).await;
    counting(&a, &m, &[], count.clone()).await;
    counting(&b, &m, &[], count.clone()).await;
    let c = client(f, "test").await;
    settle(f).await;
    let res: Num = c
        .unary(
            &m,
            (),
            Num {
                n: 7,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(res.n, 7);
    assert!(res.text == "A" || res.text == "B");
    // Both servers bid; once both know how their claim ended, the loser
    // can no longer run the handler.
    crate::eventually("both claims settled", DEADLINE, || events.decided() == 2).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Queue routing: every call is handled exactly once across three servers.
pub async fn rpc_queue_routing_exactly_one_handles(f: &dyn BusFactory) {
    let count = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(Events::default());
    let mut servers = Vec::new();
    for i in 0..3 {
        let s = observed_server(f, SERVICE, &format!("S{i}"), &events).await;
        counting(&s, &NORMAL_RPC, &[], count.clone()).await;
        servers.push(s);
    }
    let c = client(f, SERVICE).await;
    settle(f).await;
    let calls = futures::future::join_all((0..30).map(|i| {
        c.unary(
            &NORMAL_RPC,
            (),
            Num {
                n: i,
                text: String::new(),
            },
        )
        .into_future()
    }))
    .await;
    for (i, r) in calls.into_iter().enumerate() {
        assert_eq!(r.unwrap().n, i as i64);
    }
    // Every request a server read is settled (granted, lost or announced):
    // no handler can start after this.
    crate::eventually("every claim settled", DEADLINE, || {
        events.decided() == events.received_any()
    })
    .await;
    assert_eq!(events.received_any(), 30, "each request reached one server");
    assert_eq!(count.load(Ordering::SeqCst), 30);
    for s in servers {
        s.shutdown().await;
    }
}

/// TestRPC step 2: a multi call answered by three servers, one with an error;
/// the stream ends at the timeout.
pub async fn rpc_multi_three_servers_with_error(f: &dyn BusFactory) {
    let m = Method::multi("add_one_multi");
    let count = Arc::new(AtomicUsize::new(0));
    let a = server(f, "test", "A").await;
    let b = server(f, "test", "B").await;
    let cs = server(f, "test", "C").await;
    counting(&a, &m, &[], count.clone()).await;
    counting(&b, &m, &[], count.clone()).await;
    cs.route(&m)
        .handle(|_ctx: Context, _req: Num| async move {
            Err::<Num, _>(Error::new(ErrorCode::Internal, "foo"))
        })
        .await
        .unwrap();
    let c = client(f, "test").await;
    settle(f).await;
    let start = Instant::now();
    let mut results = c
        .multi(
            &m,
            (),
            Num {
                n: 5,
                text: String::new(),
            },
        )
        .timeout(Duration::from_millis(800))
        .await
        .unwrap();
    let mut ok = 0;
    let mut errs = Vec::new();
    while let Some(r) = tokio::time::timeout(WAIT, results.next())
        .await
        .expect("ends")
    {
        match r {
            Ok(n) => {
                assert_eq!(n.n, 5);
                ok += 1;
            }
            Err(e) => errs.push(e),
        }
    }
    assert!(
        start.elapsed() >= Duration::from_millis(750),
        "ends at the timeout"
    );
    assert_eq!(ok, 2);
    assert_eq!(errs, vec![Error::new(ErrorCode::Internal, "foo")]);
    assert!(errs[0].details().is_empty());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

async fn affinity_servers(
    f: &dyn BusFactory,
    scores: &[f32],
    asked: Arc<AtomicUsize>,
) -> Vec<RpcServer> {
    let mut out = Vec::new();
    for (i, &score) in scores.iter().enumerate() {
        let s = server(f, SERVICE, &format!("aff{i}")).await;
        let id = s.id().to_owned();
        let asked = asked.clone();
        s.route(&INTENSIVE_RPC)
            .affinity(move |_req: &Num| {
                asked.fetch_add(1, Ordering::SeqCst);
                score
            })
            .handle(move |_ctx: Context, _req: Num| {
                let id = id.clone();
                async move { Ok(Num { n: 0, text: id }) }
            })
            .await
            .unwrap();
        out.push(s);
    }
    out
}

/// G2 and W8.3: every server is asked for its affinity; the best one wins.
pub async fn rpc_affinity_picks_best_and_asks_everyone(f: &dyn BusFactory) {
    let asked = Arc::new(AtomicUsize::new(0));
    let servers = affinity_servers(f, &[0.2, 0.9, 0.5], asked.clone()).await;
    let c = client(f, SERVICE).await;
    settle(f).await;
    let res: Num = c.unary(&INTENSIVE_RPC, (), Num::default()).await.unwrap();
    assert_eq!(res.text, "aff1");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    let res: Num = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .selection(SelectionOptions {
            affinity_timeout: Duration::from_millis(250),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(res.text, "aff1");
    for s in servers {
        s.shutdown().await;
    }
}

/// Maximum affinity, minimum affinity and a custom selection function.
pub async fn rpc_affinity_max_and_min_and_custom_selection(f: &dyn BusFactory) {
    let asked = Arc::new(AtomicUsize::new(0));
    let servers = affinity_servers(f, &[0.2, 0.9, 0.5], asked).await;
    let c = client(f, SERVICE).await;
    settle(f).await;

    let start = Instant::now();
    let res: Num = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .selection(SelectionOptions {
            maximum_affinity: 0.5,
            affinity_timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(res.text == "aff1" || res.text == "aff2", "{}", res.text);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "max affinity wins at once"
    );

    let e = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .selection(SelectionOptions {
            minimum_affinity: 0.95,
            affinity_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e, Error::no_servers_available(3));

    let lowest: psrpc::select::SelectionFn = Arc::new(|claims: &[psrpc::Claim]| {
        claims
            .iter()
            .min_by(|a, b| a.affinity.total_cmp(&b.affinity))
            .map(|c| c.server_id.clone())
            .ok_or_else(Error::no_response)
    });
    let res: Num = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .selection(SelectionOptions {
            affinity_timeout: Duration::from_millis(300),
            selection_fn: Some(lowest),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(res.text, "aff0");
    for s in servers {
        s.shutdown().await;
    }
}

/// A server that claims after the client already chose does not hold the
/// request until it expires: it reads the decision and lets go, so its
/// shutdown (which waits for in-flight requests) ends at once.
pub async fn rpc_late_claimer_lets_go(f: &dyn BusFactory) {
    let fast = server(f, SERVICE, "fast").await;
    fast.route(&INTENSIVE_RPC)
        .affinity(|_: &Num| 1.0)
        .handle(|_c: Context, r: Num| async move { Ok(r) })
        .await
        .unwrap();
    // The late server hears requests only once the client has chosen: its
    // request channel is held back until then (its claim responses are
    // not), so its claim comes after the decision.
    let chosen = Arc::new(tokio::sync::Notify::new());
    let gate = chosen.clone();
    let late_bus =
        psrpc::testing::TestBus::new(f.connect().await).subscribe_interceptor(move |info, raw| {
            if !info.channel.legacy.ends_with("|REQ") {
                return raw;
            }
            let gate = gate.clone();
            raw.then(move |m| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    gate.notify_one();
                    m
                }
            })
            .boxed()
        });
    let slow = RpcServer::new(late_bus, SERVICE, f.server_options().server_id("late"))
        .await
        .unwrap();
    let scored = Arc::new(AtomicUsize::new(0));
    let scored_in = scored.clone();
    slow.route(&INTENSIVE_RPC)
        .affinity(move |_: &Num| {
            scored_in.fetch_add(1, Ordering::SeqCst);
            0.5
        })
        .handle(|_c: Context, r: Num| async move { Ok(r) })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;
    let _: Num = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .timeout(Duration::from_secs(10))
        .selection(SelectionOptions {
            maximum_affinity: 1.0,
            affinity_timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    chosen.notify_one();
    crate::eventually(
        "the late server scored the request",
        Duration::from_secs(20),
        || scored.load(Ordering::SeqCst) == 1,
    )
    .await;
    let start = Instant::now();
    slow.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the late server waited for a decision that had passed: {:?}",
        start.elapsed()
    );
    fast.shutdown().await;
}

/// Negative affinity never claims; zero claims but never wins by default.
pub async fn rpc_negative_affinity_never_claims(f: &dyn BusFactory) {
    let asked = Arc::new(AtomicUsize::new(0));
    let servers = affinity_servers(f, &[-1.0, 0.3], asked.clone()).await;
    let c = client_with(
        f,
        SERVICE,
        ClientOptions::default().selection_timeout(Duration::from_millis(300)),
    )
    .await;
    settle(f).await;
    for _ in 0..3 {
        let res: Num = c.unary(&INTENSIVE_RPC, (), Num::default()).await.unwrap();
        assert_eq!(res.text, "aff1");
    }
    servers[1].kill();
    let e = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .await
        .unwrap_err();
    assert_eq!(e, Error::no_response());
    servers[0].kill();

    let zero = affinity_servers(f, &[0.0], Arc::new(AtomicUsize::new(0))).await;
    settle(f).await;
    let e = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .await
        .unwrap_err();
    assert_eq!(e, Error::no_servers_available(1));
    zero[0].kill();
}

/// No server: a claimed call fails with `unavailable` after the selection timeout.
pub async fn rpc_no_server_unavailable(f: &dyn BusFactory) {
    let c = client(f, "nobody_home").await;
    let start = Instant::now();
    let e = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(e, Error::no_response());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Even when the call deadline is shorter than the selection timeout.
    let e = c
        .unary(&INTENSIVE_RPC, (), Num::default())
        .timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
}

/// No server for a method without claims: `deadline_exceeded` at the timeout.
pub async fn rpc_single_server_no_server_deadline(f: &dyn BusFactory) {
    let m: Method<Num, Num> = Method::queue("Lonely").single_server();
    let c = client(f, "nobody_home").await;
    let start = Instant::now();
    let e = c
        .unary(&m, (), Num::default())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e, Error::request_timed_out());
    assert!(start.elapsed() >= Duration::from_millis(280));
}

/// single_server: the request goes straight to the server, no claim traffic.
pub async fn rpc_single_server_without_claim(f: &dyn BusFactory) {
    let m = Method::queue("Direct").single_server();
    let count = Arc::new(AtomicUsize::new(0));
    let s = server(f, SERVICE, "single").await;
    counting(&s, &m, &topic(&["t"]), count.clone()).await;
    let c = client(f, SERVICE).await;
    // On the client's own connection: a claim request the server sent
    // would arrive there before its response.
    let mut claims = c
        .bus()
        .subscribe(&channels::claim_request_channel(SERVICE, c.id()), 10)
        .await
        .unwrap();
    settle(f).await;
    let res: Num = c.unary(&m, topic(&["t"]), Num::default()).await.unwrap();
    assert_eq!(res.text, "single");
    assert!(claims.try_recv().is_err(), "no claim request");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// No server for a multi call: the stream ends empty at the timeout.
pub async fn rpc_multi_no_server_closes_empty(f: &dyn BusFactory) {
    let c = client(f, "nobody_home").await;
    let start = Instant::now();
    let results: Vec<_> = c
        .multi(&GET_STATS, (), Num::default())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(results.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(280));
}

/// G7/G8: codes, messages and details reach the client; sources stay local.
pub async fn rpc_errors_code_message_details(f: &dyn BusFactory) {
    let s = server(f, SERVICE, "err").await;
    s.route(&NORMAL_RPC_MY)
        .handle(|_ctx: Context, req: MyRequest| async move {
            match req.return_error {
                0 => Ok(MyResponse {}),
                1 => {
                    Err(Error::new(ErrorCode::FailedPrecondition, "requested error")
                        .with_detail(&req))
                }
                2 => Err(Error::from_grpc_status(
                    GrpcCode::FailedPrecondition,
                    "requested error",
                    vec![wire::pack_any(&req)],
                )),
                3 => Err(Error::wrap(
                    ErrorCode::Internal,
                    std::io::Error::other("disk on fire"),
                )),
                4 => Err(Error::new(ErrorCode::Unknown, "")),
                _ => Err(Error::from_wire("teapot", "short and stout", Vec::new())),
            }
        })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;
    let call = |n| c.unary(&NORMAL_RPC_MY, (), MyRequest { return_error: n });

    assert_eq!(call(0).await.unwrap(), MyResponse {});
    for n in [1, 2] {
        let e = call(n).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::FailedPrecondition);
        assert_eq!(e.message(), "requested error");
        assert_eq!(e.grpc_code(), GrpcCode::FailedPrecondition);
        assert_eq!(e.details().len(), 1);
        assert_eq!(
            e.details()[0].type_url,
            "type.googleapis.com/psrpc.internal.test.customservice.MyRequest"
        );
        assert_eq!(e.detail::<MyRequest>(), Some(MyRequest { return_error: n }));
    }
    let e = call(3).await.unwrap_err();
    assert_eq!(e, Error::new(ErrorCode::Internal, "disk on fire"));
    assert!(
        std::error::Error::source(&e).is_none(),
        "the source stays on the server"
    );
    let e = call(4).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unknown);
    assert!(
        !e.message().is_empty(),
        "an empty message must not read as success"
    );
    let e = call(5).await.unwrap_err();
    assert_eq!(e.wire_code(), "teapot");
    assert_eq!(e.code(), ErrorCode::Unrecognized);
    assert_eq!(e.http_status(), 500);
    s.shutdown().await;
}

/// Per-call timeout, and the request expiry clamped to the caller's deadline.
pub async fn rpc_timeout_and_deadline_clamp(f: &dyn BusFactory) {
    let s = server(f, SERVICE, "slow").await;
    s.route(&NORMAL_RPC)
        .handle(|ctx: Context, req: Num| async move {
            let left = ctx.remaining().expect("handler has a deadline");
            tokio::time::sleep(Duration::from_millis(req.n as u64)).await;
            Ok(Num {
                n: left.as_millis() as i64,
                text: String::new(),
            })
        })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;

    // Default timeout is 3 s: the handler sees about that much.
    let r: Num = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
    assert!((2000..=3000).contains(&r.n), "{}", r.n);

    // A longer per-call timeout than the context allows: clamped.
    let ctx = Context::new().with_timeout(Duration::from_millis(800));
    let r: Num = c
        .unary(&NORMAL_RPC, (), Num::default())
        .context(&ctx)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        r.n <= 800,
        "expiry clamped to the caller's deadline: {}",
        r.n
    );

    // A handler slower than the timeout: deadline_exceeded at the timeout
    // (had the call waited for the handler, it would have succeeded).
    let e = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 1500,
                text: String::new(),
            },
        )
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e, Error::request_timed_out());
    s.shutdown().await;
}

/// Canceling the caller's context cancels the call.
pub async fn rpc_context_cancel(f: &dyn BusFactory) {
    let s = server(f, SERVICE, "slow").await;
    s.route(&NORMAL_RPC)
        .handle(|_ctx: Context, _req: Num| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Num::default())
        })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;
    let token = CancellationToken::new();
    let ctx = Context::new().with_cancel(token.clone());
    let t2 = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t2.cancel();
    });
    // Canceled, neither answered (the handler takes 2 s) nor timed out (3 s).
    let e = c
        .unary(&NORMAL_RPC, (), Num::default())
        .context(&ctx)
        .await
        .unwrap_err();
    assert_eq!(e, Error::request_canceled());
    s.kill();
}

/// Metadata and the incoming header reach the handler.
pub async fn rpc_metadata_round_trip(f: &dyn BusFactory) {
    let s = server(f, SERVICE, "meta").await;
    s.route(&NORMAL_RPC)
        .handle(|ctx: Context, _req: Num| async move {
            let h = ctx.incoming().expect("incoming header");
            let age = std::time::SystemTime::now()
                .duration_since(h.sent_at)
                .unwrap_or_default();
            assert!(age < Duration::from_secs(5));
            let info = ctx.info().expect("info");
            Ok(Num {
                n: ctx.metadata().len() as i64,
                text: format!(
                    "{}|{}|{}|{}",
                    h.remote_id,
                    ctx.metadata().get("k").cloned().unwrap_or_default(),
                    ctx.metadata().get("trace").cloned().unwrap_or_default(),
                    info.method
                ),
            })
        })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;
    let r: Num = c
        .unary(&NORMAL_RPC, (), Num::default())
        .metadata_entry("k", "v")
        .metadata_entry("trace", "first")
        .metadata_entry("trace", "second")
        .await
        .unwrap();
    assert_eq!(r.n, 2);
    assert_eq!(r.text, format!("{}|v|second|NormalRPC", c.id()));
    let r: Num = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
    assert_eq!(r.n, 0);
    s.shutdown().await;
}

/// G1/G3: what Go's request and response hooks see, seen by an
/// interceptor: one request per call, one response per call and per multi
/// item.
pub async fn rpc_hooks(f: &dyn BusFactory) {
    let counter = psrpc::testing::CallCounter::new();
    let count = Arc::new(AtomicUsize::new(0));
    let a = server(f, SERVICE, "hA").await;
    let b = server(f, SERVICE, "hB").await;
    for s in [&a, &b] {
        counting(s, &NORMAL_RPC, &[], count.clone()).await;
        counting(s, &GET_STATS, &[], count.clone()).await;
    }
    let c = client_with(
        f,
        SERVICE,
        ClientOptions::default().interceptor(counter.clone()),
    )
    .await;
    settle(f).await;
    let _: Num = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
    assert_eq!((counter.requests(), counter.responses()), (1, 1));
    let items: Vec<_> = c
        .multi(&GET_STATS, (), Num::default())
        .timeout(Duration::from_millis(500))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|r| r.is_ok()));
    assert_eq!((counter.requests(), counter.responses()), (2, 3));
    a.shutdown().await;
    b.shutdown().await;
}

/// G5: topics isolate servers; deregistration works; odd topic strings are fine.
pub async fn rpc_topics_isolate_and_deregister(f: &dyn BusFactory) {
    let ca = Arc::new(AtomicUsize::new(0));
    let cb = Arc::new(AtomicUsize::new(0));
    let sa = server(f, SERVICE, "tA").await;
    let sb = server(f, SERVICE, "tB").await;
    counting(&sa, &GET_REGION_STATS, &topic(&["regionA"]), ca.clone()).await;
    counting(&sa, &GET_REGION_STATS, &topic(&["regionB"]), ca.clone()).await;
    sa.deregister(&GET_REGION_STATS, topic(&["regionB"]));
    counting(&sb, &GET_REGION_STATS, &topic(&["regionB"]), cb.clone()).await;
    let odd = topic(&["room/1 é*>.Q", "🚀"]);
    counting(&sb, &NORMAL_RPC, &odd, cb.clone()).await;
    let c = client(f, SERVICE).await;
    settle(f).await;
    let mut results = c
        .multi(&GET_REGION_STATS, topic(&["regionB"]), Num::default())
        .timeout(Duration::from_millis(500))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(1), results.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.text, "tB");
    assert!(
        results.next().await.is_none(),
        "only one server has regionB"
    );
    assert_eq!(
        (ca.load(Ordering::SeqCst), cb.load(Ordering::SeqCst)),
        (0, 1)
    );

    let r: Num = c
        .unary(&NORMAL_RPC, odd.clone(), Num::default())
        .await
        .unwrap();
    assert_eq!(r.text, "tB");
    // The same method on another topic has no server.
    let e = c
        .unary(&NORMAL_RPC, topic(&["room/1 é*>", "Q"]), Num::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    sa.shutdown().await;
    sb.shutdown().await;
}

/// Duplicate registration, registration after shutdown, re-registration.
pub async fn rpc_registration_errors(f: &dyn BusFactory) {
    let s = server(f, SERVICE, "reg").await;
    let count = Arc::new(AtomicUsize::new(0));
    let t = topic(&["x"]);
    counting(&s, &GET_REGION_STATS, &t, count.clone()).await;
    let e = s
        .route(&GET_REGION_STATS)
        .topic(&t)
        .handle(|_c: Context, r: Num| async move { Ok(r) })
        .await
        .unwrap_err();
    assert_eq!(
        e,
        Error::new(ErrorCode::AlreadyExists, "handler already exists")
    );
    s.deregister(&GET_REGION_STATS, &t);
    counting(&s, &GET_REGION_STATS, &t, count.clone()).await;
    s.shutdown().await;
    let e = s
        .route(&NORMAL_RPC)
        .handle(|_c: Context, r: Num| async move { Ok(r) })
        .await
        .unwrap_err();
    assert_eq!(e, Error::server_closed());
}

/// A request that does not decode gets `malformed_request`; a response that
/// does not decode gives `malformed_result`.
pub async fn rpc_malformed_request_and_result(f: &dyn BusFactory) {
    /// Field 2 as bytes that are not valid UTF-8: `Num.text` cannot read them.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotUtf8 {
        #[prost(bytes = "vec", tag = "2")]
        bad: Vec<u8>,
    }
    /// `GetStats` as a server that answers `NotUtf8` sees it.
    static GET_STATS_NOT_UTF8: Method<Num, NotUtf8> = Method::multi("GetStats");
    let s = server(f, SERVICE, "mal").await;
    counting(&s, &NORMAL_RPC, &[], Arc::new(AtomicUsize::new(0))).await;
    s.route(&GET_STATS_NOT_UTF8)
        .handle(|_c: Context, _r: Num| async move {
            Ok(NotUtf8 {
                bad: vec![0xff, 0xfe],
            })
        })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    settle(f).await;
    let garbage = Bytes::from(
        NotUtf8 {
            bad: vec![0xc3, 0x28],
        }
        .encode_to_vec(),
    );
    let e = c
        .unary_raw(&NORMAL_RPC, (), garbage, &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MalformedRequest);
    let mut items = c
        .multi(&GET_STATS, (), Num::default())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap();
    let e = items.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), ErrorCode::MalformedResponse);
    s.shutdown().await;
}

/// A request whose expiry has passed is dropped without an answer.
pub async fn rpc_expired_request_ignored(f: &dyn BusFactory) {
    let count = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(Events::default());
    let s = observed_server(f, SERVICE, "exp", &events).await;
    counting(&s, &GET_STATS, &[], count.clone()).await;
    let bus = f.connect().await;
    let me = psrpc::protocol::id::new_id(psrpc::protocol::id::CLIENT_PREFIX);
    let mut res = bus
        .subscribe(&channels::response_channel(SERVICE, &me), 10)
        .await
        .unwrap();
    settle(f).await;
    let now = wire::now_ns();
    let mk = |expiry| Request {
        request_id: psrpc::protocol::id::new_request_id(),
        client_id: me.clone(),
        sent_at: now - 5_000_000_000,
        expiry,
        multi: true,
        ..Default::default()
    };
    let ch = channels::rpc_channel(SERVICE, GET_STATS.name(), &[], false);
    bus.publish(&ch, wire::encode_msg(&mk(now - 1_000_000_000)))
        .await
        .unwrap();
    crate::eventually("the server saw the request expired", DEADLINE, || {
        events.expired_any() == 1
    })
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 0);
    // The same request unexpired is answered.
    let second = mk(now + 3_000_000_000);
    let second_id = second.request_id.clone();
    bus.publish(&ch, wire::encode_msg(&second)).await.unwrap();
    // The first message from the server on this channel: nothing answered
    // the expired request before it.
    let r: Response =
        psrpc::codec::decode_envelope(recv_raw(&mut res, WAIT).await.expect("answer")).unwrap();
    assert_eq!(r.server_id, "exp");
    assert_eq!(r.request_id, second_id);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    s.shutdown().await;
}

/// How many handlers of a [`slow_server`] started and finished.
#[derive(Default)]
struct Progress {
    started: AtomicUsize,
    finished: AtomicUsize,
}

async fn slow_server(f: &dyn BusFactory, id: &str) -> (RpcServer, Arc<Progress>) {
    let s = server(f, SERVICE, id).await;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    s.route(&NORMAL_RPC)
        .handle(move |_c: Context, r: Num| {
            let p = p.clone();
            async move {
                p.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(r.n as u64)).await;
                p.finished.fetch_add(1, Ordering::SeqCst);
                Ok(r)
            }
        })
        .await
        .unwrap();
    (s, progress)
}

/// Shutdown drains in-flight handlers; kill returns at once (and the running
/// handler still answers, as in Go).
pub async fn server_shutdown_waits_kill_does_not(f: &dyn BusFactory) {
    let c = client(f, SERVICE).await;
    for kill in [false, true] {
        let (s, progress) = slow_server(f, if kill { "killme" } else { "drainme" }).await;
        settle(f).await;
        let call = {
            let c = c.clone();
            tokio::spawn(async move {
                c.unary(
                    &NORMAL_RPC,
                    (),
                    Num {
                        n: 1500,
                        text: String::new(),
                    },
                )
                .timeout(Duration::from_secs(20))
                .await
            })
        };
        crate::eventually("the handler started", Duration::from_secs(20), || {
            progress.started.load(Ordering::SeqCst) == 1
        })
        .await;
        if kill {
            // Returns without waiting for the running handler.
            s.kill();
            assert_eq!(progress.finished.load(Ordering::SeqCst), 0, "kill waited");
        } else {
            tokio::time::timeout(WAIT, s.shutdown())
                .await
                .expect("shutdown ends");
            assert_eq!(
                progress.finished.load(Ordering::SeqCst),
                1,
                "shutdown returned before the handler ended"
            );
        }
        assert_eq!(call.await.unwrap().unwrap().n, 1500);
        // No longer serving.
        let e = c
            .unary(&NORMAL_RPC, (), Num::default())
            .timeout(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
    }
}

/// Closing the client fails every pending call at once; new calls fail too.
pub async fn client_close_fails_pending(f: &dyn BusFactory) {
    let (s, progress) = slow_server(f, "closing").await;
    let c = client(f, SERVICE).await;
    settle(f).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.unary(
                    &NORMAL_RPC,
                    (),
                    Num {
                        n: 2000,
                        text: String::new(),
                    },
                )
                .await
            })
        })
        .collect();
    let multi = c.multi(&GET_STATS, (), Num::default()).await.unwrap();
    crate::eventually(
        "the three calls reached the handler",
        Duration::from_secs(20),
        || progress.started.load(Ordering::SeqCst) == 3,
    )
    .await;
    c.close();
    // Failed by the close, not by an answer (the handlers take 2 s) nor a
    // timeout (which would be another error).
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap_err(), Error::client_closed());
    }
    let items: Vec<_> = multi.collect().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err(), &Error::client_closed());
    let e = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap_err();
    assert_eq!(e, Error::client_closed());
    assert!(c.subscribe(&PROCESS_UPDATE, ()).await.is_err());
    s.kill();
}

/// G6: a multi subscription on a topic: every subscriber gets each update,
/// other topics get none; without a topic too.
pub async fn subscription_multi_topic_fanout(f: &dyn BusFactory) {
    let ca = client(f, SERVICE).await;
    let cb = client(f, SERVICE).await;
    let mut a = ca
        .subscribe(&UPDATE_REGION_STATE, &topic(&["regionA"]))
        .await
        .unwrap();
    let mut b = cb
        .subscribe(&UPDATE_REGION_STATE, &topic(&["regionA"]))
        .await
        .unwrap();
    let mut other = cb
        .subscribe(&UPDATE_REGION_STATE, &topic(&["regionB"]))
        .await
        .unwrap();
    let s = server(f, SERVICE, "pub").await;
    settle(f).await;
    s.publish(&UPDATE_REGION_STATE, &topic(&["regionA"]), &MyUpdate {})
        .await
        .unwrap();
    for sub in [&mut a, &mut b] {
        let got = tokio::time::timeout(WAIT, sub.recv()).await;
        assert_eq!(got.unwrap(), Some(MyUpdate {}));
    }
    // `other` shares `b`'s connection: an update for it would have come
    // in before `b`'s.
    assert!(
        futures::FutureExt::now_or_never(other.recv()).is_none(),
        "other topics get none"
    );
    a.close();
    assert_eq!(a.recv().await, None);

    let m: Method<Num, Num> = Method::multi("Broadcast");
    let mut x = ca.subscribe(&m, ()).await.unwrap();
    let mut y = cb.subscribe(&m, ()).await.unwrap();
    settle(f).await;
    s.publish(
        &m,
        (),
        &Num {
            n: 9,
            text: "hi".into(),
        },
    )
    .await
    .unwrap();
    for sub in [&mut x, &mut y] {
        let got = tokio::time::timeout(Duration::from_secs(1), sub.next())
            .await
            .unwrap();
        assert_eq!(got.unwrap().n, 9);
    }
}

/// A queue subscription: each update goes to exactly one subscriber.
pub async fn subscription_queue_one_subscriber(f: &dyn BusFactory) {
    let ca = client(f, SERVICE).await;
    let cb = client(f, SERVICE).await;
    let mut a = ca.subscribe(&PROCESS_UPDATE, ()).await.unwrap();
    let mut b = cb.subscribe(&PROCESS_UPDATE, ()).await.unwrap();
    let s = server(f, SERVICE, "qpub").await;
    settle(f).await;
    // Distinct payloads, also from another run of this test on the same
    // Redis (it dedups identical ones within 5 s, whatever the channel).
    let run = psrpc::protocol::id::new_id("");
    for n in 0..20 {
        s.publish(
            &PROCESS_UPDATE,
            (),
            &Num {
                n,
                text: run.clone(),
            },
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut drain = |a: &mut psrpc::Subscription<Num>, b: &mut psrpc::Subscription<Num>| {
        for sub in [a, b] {
            while let Some(Some(m)) = futures::FutureExt::now_or_never(sub.recv()) {
                seen.push(m.n);
            }
        }
        seen.len() >= 20
    };
    crate::eventually("every update arrives", DEADLINE, || drain(&mut a, &mut b)).await;
    // Nothing tells one member that the other got an update: only time
    // shows that no update arrives twice.
    crate::quiet_for(QUIET).await;
    drain(&mut a, &mut b);
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
}

/// Malformed bytes on every channel the runtime listens on: dropped, no
/// panic, and serving goes on.
pub async fn malformed_bytes_on_every_channel(f: &dyn BusFactory) {
    let count = Arc::new(AtomicUsize::new(0));
    let s = server(f, SERVICE, "robust").await;
    counting(&s, &NORMAL_RPC, &[], count.clone()).await;
    counting(&s, &GET_STATS, &[], count.clone()).await;
    s.route(&INTENSIVE_RPC)
        .affinity(|_: &Num| 1.0)
        .handle(|_c: Context, r: Num| async move { Ok(r) })
        .await
        .unwrap();
    let c = client(f, SERVICE).await;
    // The queue subscription is of another service: on NATS a queue
    // subscription of a service shares its queue subject with the service's
    // queue requests, and an update that NATS hands to a server's bus would
    // be dropped there, as Go drops it.
    const UPDATES: &str = "Updates";
    let cu = client(f, UPDATES).await;
    let mut sub = cu.subscribe(&PROCESS_UPDATE, ()).await.unwrap();
    settle(f).await;
    let bus: DynBus = f.connect().await;
    let chans = [
        channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true),
        channels::rpc_channel(SERVICE, GET_STATS.name(), &[], false),
        channels::rpc_channel(SERVICE, INTENSIVE_RPC.name(), &[], false),
        channels::claim_response_channel(SERVICE, NORMAL_RPC.name(), &[]),
        channels::claim_response_channel(SERVICE, INTENSIVE_RPC.name(), &[]),
        channels::response_channel(SERVICE, c.id()),
        channels::claim_request_channel(SERVICE, c.id()),
        channels::rpc_channel(UPDATES, PROCESS_UPDATE.name(), &[], true),
    ];
    let wrong_type = wire::encode_msg(&wire::ClaimResponse {
        request_id: "x".into(),
        server_id: "y".into(),
    });
    let wrong_user_type = wire::encode_msg_raw("type.googleapis.com/other.Thing", b"\x08\x01");
    let bad_utf8 =
        wire::encode_msg_raw("type.googleapis.com/internal.Request", b"\x0a\x02\xff\xfe");
    let payloads: Vec<Bytes> = vec![
        Bytes::from_static(b""),
        Bytes::from_static(b"\xff\xff\xff\xff\xff"),
        Bytes::from_static(b"\x0a\x80"),
        Bytes::from(vec![0x0a; 300]),
        wrong_type,
        wrong_user_type,
        bad_utf8,
        wire::encode_msg_raw("type.googleapis.com/internal.Response", &[0x12, 0x50, 0x01]),
    ];
    for ch in &chans {
        for p in &payloads {
            bus.publish(ch, p.clone()).await.unwrap();
        }
    }
    // Good messages through the same connection after the junk: a
    // subscriber hears one connection's messages in order, so when these
    // arrive the junk before them has been dealt with. An update on the
    // update channel, and a multi request that the server counts.
    let update = Num {
        n: 77,
        // Distinct from other runs: Redis dedups identical queue messages.
        text: psrpc::protocol::id::new_id(""),
    };
    let update = wire::encode_msg_raw(&wire::type_url_of::<Num>(), &update.encode_to_vec());
    bus.publish(&chans[7], update).await.unwrap();
    let now = wire::now_ns();
    let marker = Request {
        request_id: psrpc::protocol::id::new_request_id(),
        client_id: c.id().to_owned(),
        sent_at: now,
        expiry: now + 3_000_000_000,
        multi: true,
        ..Default::default()
    };
    bus.publish(&chans[1], wire::encode_msg(&marker))
        .await
        .unwrap();
    crate::eventually("the server got past the junk", DEADLINE, || {
        count.load(Ordering::SeqCst) == 1
    })
    .await;
    let got = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.n, 77,
        "malformed updates were skipped, the good one arrives"
    );
    let r: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 1,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.n, 1);
    let r: Num = c
        .unary(
            &INTENSIVE_RPC,
            (),
            Num {
                n: 2,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.n, 2);
    let items: Vec<_> = c
        .multi(&GET_STATS, (), Num::default())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 1);
    assert!(items[0].is_ok());
    assert_eq!(count.load(Ordering::SeqCst), 3);
    s.shutdown().await;
}

// ------------------------------------------------------- stuck subscribers

/// A subscriber that never reads harms only itself: while many events are
/// published to it, unrelated calls on the same bus connection all succeed;
/// what does not fit its buffer is dropped for it alone and counted; and the
/// bus holds nothing else for it (every event published is either in its
/// buffer or counted as dropped, so no hidden queue grows).
pub async fn stuck_subscriber_harms_only_itself(f: &dyn BusFactory) {
    const EVENTS: usize = 10_000;
    const BUFFER: usize = 16;
    let service = "Stuck";
    let bus = f.connect().await;
    // The unrelated service, served and called over the same connection.
    let s = RpcServer::new(bus.clone(), service, f.server_options().server_id("busy"))
        .await
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    counting(&s, &NORMAL_RPC, &[], served.clone()).await;
    let c = RpcClient::new(bus.clone(), service, ClientOptions::default())
        .await
        .expect("client");
    // Two subscriptions that never read: a queue one and a fan-out one.
    let queue_ch = channels::rpc_channel(service, "Events", &[], true);
    let fanout_ch = channels::rpc_channel(service, "Broadcast", &[], false);
    let stuck_q = bus.subscribe_queue(&queue_ch, BUFFER).await.unwrap();
    let stuck_f = bus.subscribe(&fanout_ch, BUFFER).await.unwrap();
    settle(f).await;

    let publisher = f.connect().await;
    let run = psrpc::protocol::id::new_id("");
    let flood = tokio::spawn(async move {
        for i in 0..EVENTS {
            // Distinct payloads, also from another run of this test on the
            // same Redis: its queue locks dedup identical ones.
            let event = wire::encode_msg(&Request {
                request_id: format!("{run}{i}"),
                ..Default::default()
            });
            publisher.publish(&queue_ch, event.clone()).await.unwrap();
            publisher.publish(&fanout_ch, event).await.unwrap();
            // Bursts of 200 messages, about 10 000 a second: a flood, but
            // within what one connection's reader handles in a debug build,
            // so that what is measured is the stuck subscriber's effect.
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // Calls go on until every event is accounted for, and must all succeed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut calls = 0;
    let t0 = Instant::now();
    loop {
        let r: Num = c
            .unary(
                &NORMAL_RPC,
                (),
                Num {
                    n: calls,
                    text: String::new(),
                },
            )
            .timeout(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: call {calls} while flooding: {e} (after {:?}, {} dropped, flood done: {})",
                    f.name(),
                    t0.elapsed(),
                    bus.drops().total(),
                    flood.is_finished()
                )
            });
        assert_eq!(r.n, calls);
        calls += 1;
        let held = stuck_q.len() + stuck_f.len();
        let dropped = bus.drops().count(psrpc::drops::DropReason::SlowConsumer) as usize;
        if flood.is_finished() && held + dropped == 2 * EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {held} held + {dropped} dropped of {} published",
            f.name(),
            2 * EVENTS
        );
    }
    flood.await.unwrap();
    eprintln!(
        "{}: {calls} calls during the flood, accounted after {:?}",
        f.name(),
        t0.elapsed()
    );
    assert_eq!(served.load(Ordering::SeqCst), calls as usize);
    for sub in [&stuck_q, &stuck_f] {
        assert!(
            sub.len() <= sub.capacity(),
            "{} > {}",
            sub.len(),
            sub.capacity()
        );
        let bound = (2 * BUFFER).max(psrpc::bus::READER_PENDING_LIMIT);
        assert!(sub.capacity() <= bound, "{}", sub.capacity());
    }
    // The stuck subscribers lost what they could not hold.
    assert!(
        bus.drops().count(psrpc::drops::DropReason::SlowConsumer) > 0,
        "{}: nothing dropped for the stuck subscribers",
        f.name()
    );
    // A call after the flood still succeeds.
    let _: Num = c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
}
