//! Claim skip between every kind of peer, the server's request observer,
//! queue methods refusing affinity settings, claims released at their
//! request's expiry, and requests whose times only a skewed clock explains.
//!
//! The peers that are not this runtime's client are played by hand: raw
//! requests, claims and claim responses published on the bus and read back
//! through raw subscriptions, byte for byte what another implementation
//! (an older Go psrpc, a client that died) would send.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use psrpc::bus::{DynBus, MessageBus, RawSubscription};
use psrpc::drops::DropReason;
use psrpc::interceptor::ServerInterceptor;
use psrpc::middleware::metrics::Metrics;
use psrpc::protocol::channels;
use psrpc::protocol::wire::{self, ClaimRequest, ClaimResponse, Request, Response};
use psrpc::{
    ClaimOutcome, ClientOptions, Context, ErrorCode, Method, RpcClient, RpcInfo, RpcServer,
    SelectionOptions, ServerOptions,
};

use crate::my_service::*;
use crate::suite::{counting, settle};
use crate::{BusFactory, Num};

const WAIT: Duration = Duration::from_secs(20);
const SEC: i64 = 1_000_000_000;

/// A queue method served without the claim handshake.
static SINGLE_RPC: Method<Num, Num> = Method::queue("SingleRPC").single_server();

async fn next_raw(sub: &mut RawSubscription, what: &str) -> Bytes {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("subscription closed waiting for {what}"))
}

async fn next<M: wire::Envelope>(sub: &mut RawSubscription, what: &str) -> M {
    psrpc::codec::decode_envelope(next_raw(sub, what).await).expect(what)
}

/// What a server's observer saw, by method.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `on_request_received`.
    Received(String),
    /// `on_request_expired`.
    Expired(String, Duration),
    /// `on_claim`.
    Claim(String, ClaimOutcome, Duration),
}

/// A server interceptor that keeps every bus event.
#[derive(Default)]
pub struct Events(Mutex<Vec<Event>>);

impl Events {
    fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    /// How many claims settled, whatever the outcome.
    pub(crate) fn decided(&self) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, Event::Claim(..)))
            .count()
    }
    /// How many requests were read off the bus, of any method.
    pub(crate) fn received_any(&self) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, Event::Received(_)))
            .count()
    }
    /// How many requests arrived expired, of any method.
    pub(crate) fn expired_any(&self) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, Event::Expired(..)))
            .count()
    }
    fn claims(&self, method: &str, outcome: ClaimOutcome) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, Event::Claim(m, o, _) if m == method && *o == outcome))
            .count()
    }
    fn received(&self, method: &str) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, Event::Received(m) if m == method))
            .count()
    }
}

impl ServerInterceptor for Events {
    fn request_received(&self, info: &RpcInfo) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Received(info.method.clone()));
    }
    fn request_expired(&self, info: &RpcInfo, late_by: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Expired(info.method.clone(), late_by));
    }
    fn claim_settled(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Claim(info.method.clone(), outcome, wait));
    }
}

/// A metrics observer that keeps only the server's request events, to
/// check that the metrics middleware receives them.
#[derive(Default)]
pub struct MetricEvents(Events);

impl psrpc::middleware::metrics::MetricsObserver for MetricEvents {
    fn on_unary_request(
        &self,
        _: psrpc::interceptor::Role,
        _: &RpcInfo,
        _: Duration,
        _: Option<&psrpc::Error>,
        _: usize,
        _: usize,
    ) {
    }
    fn on_multi_request(
        &self,
        _: psrpc::interceptor::Role,
        _: &RpcInfo,
        _: Duration,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
    }
    fn on_stream_send(
        &self,
        _: psrpc::interceptor::Role,
        _: &RpcInfo,
        _: Duration,
        _: Option<&psrpc::Error>,
        _: usize,
    ) {
    }
    fn on_stream_recv(&self, _: psrpc::interceptor::Role, _: &RpcInfo, _: usize) {}
    fn on_stream_open(&self, _: psrpc::interceptor::Role, _: &RpcInfo) {}
    fn on_stream_close(
        &self,
        _: psrpc::interceptor::Role,
        _: &RpcInfo,
        _: psrpc::CloseReason,
        _: &psrpc::Error,
    ) {
    }
    fn on_request_received(&self, info: &RpcInfo) {
        self.0.request_received(info);
    }
    fn on_request_expired(&self, info: &RpcInfo, late_by: Duration) {
        self.0.request_expired(info, late_by);
    }
    fn on_claim(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
        self.0.claim_settled(info, outcome, wait);
    }
}

fn raw_request(client_id: &str, n: i64, expiry_in: i64, skip_claim: bool) -> Request {
    let now = wire::now_ns();
    Request {
        request_id: psrpc::protocol::id::new_request_id(),
        client_id: client_id.to_owned(),
        sent_at: now,
        expiry: now + expiry_in,
        raw_request: Bytes::from(
            Num {
                n,
                text: String::new(),
            }
            .encode_to_vec(),
        ),
        skip_claim,
        ..Default::default()
    }
}

async fn client(f: &dyn BusFactory) -> RpcClient {
    RpcClient::new(f.connect().await, SERVICE, ClientOptions::default())
        .await
        .expect("client")
}

/// Mixed peers: a server that opted in with a caller that does not
/// advertise (the classic four messages), with one that does (three
/// publishes, nothing on the claim-response channel), the opt-in switched
/// off at run time, and a classic server with an advertising caller.
pub async fn claim_skip_mixed_peers(f: &dyn BusFactory) {
    let skip = Arc::new(AtomicBool::new(true));
    let events = Arc::new(Events::default());
    let count = Arc::new(AtomicUsize::new(0));
    let s = RpcServer::new(
        f.connect().await,
        SERVICE,
        ServerOptions::default()
            .server_id("skipper")
            .interceptor(events.clone())
            .skip_claim({
                let skip = skip.clone();
                move || skip.load(Ordering::SeqCst)
            }),
    )
    .await
    .unwrap();
    counting(&s, &NORMAL_RPC, &[], count.clone()).await;
    let bus = f.connect().await;
    let req_ch = channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true);
    let rclaim_ch = channels::claim_response_channel(SERVICE, NORMAL_RPC.name(), &[]);
    let mut rclaims = bus.subscribe(&rclaim_ch, 100).await.unwrap();
    let mut requests = bus.subscribe(&req_ch, 100).await.unwrap();

    // 1. A caller that does not advertise (no field 10): the classic
    // handshake, even though the server opted in.
    let me = psrpc::protocol::id::new_id(psrpc::protocol::id::CLIENT_PREFIX);
    let mut claims = bus
        .subscribe(&channels::claim_request_channel(SERVICE, &me), 10)
        .await
        .unwrap();
    let mut responses = bus
        .subscribe(&channels::response_channel(SERVICE, &me), 10)
        .await
        .unwrap();
    settle(f).await;
    let req = raw_request(&me, 7, 5 * SEC, false);
    bus.publish(&req_ch, wire::encode_msg(&req)).await.unwrap();
    let bid: ClaimRequest = next(&mut claims, "bid").await;
    assert_eq!(
        bid,
        ClaimRequest {
            request_id: req.request_id.clone(),
            server_id: "skipper".into(),
            affinity: 1.0,
            handling: false,
        }
    );
    assert_eq!(count.load(Ordering::SeqCst), 0, "ran before the grant");
    let grant = ClaimResponse {
        request_id: req.request_id.clone(),
        server_id: "skipper".into(),
    };
    bus.publish(&rclaim_ch, wire::encode_msg(&grant))
        .await
        .unwrap();
    let r: Response = next(&mut responses, "response").await;
    assert_eq!(
        (r.request_id.as_str(), r.error.as_str()),
        (req.request_id.as_str(), "")
    );
    assert_eq!(Num::decode(r.raw_response).unwrap().n, 7);
    // The four messages, as published.
    assert_eq!(next::<Request>(&mut requests, "request").await, req);
    assert_eq!(next::<ClaimResponse>(&mut rclaims, "grant").await, grant);
    crate::eventually("granted reported", WAIT, || {
        events.claims("NormalRPC", ClaimOutcome::Granted) == 1
    })
    .await;

    // 2. An advertising caller: announcement, handler, response.
    let c = client(f).await;
    let mut announcements = bus
        .subscribe(&channels::claim_request_channel(SERVICE, c.id()), 10)
        .await
        .unwrap();
    settle(f).await;
    let res: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 8,
                text: "".into(),
            },
        )
        .await
        .expect("call with the skip");
    assert_eq!((res.n, res.text.as_str()), (8, "skipper"));
    let sent: Request = next(&mut requests, "advertising request").await;
    assert!(sent.skip_claim, "the caller advertises on a queue method");
    assert_eq!(
        hex::encode(&wire::encode(&sent)[wire::encode(&sent).len() - 2..]),
        "5001",
        "field 10 is the last pair"
    );
    let ann: ClaimRequest = next(&mut announcements, "announcement").await;
    assert_eq!(
        ann,
        ClaimRequest {
            request_id: sent.request_id.clone(),
            server_id: "skipper".into(),
            affinity: 1.0,
            handling: true,
        }
    );
    crate::eventually("skipped reported", WAIT, || {
        events.claims("NormalRPC", ClaimOutcome::Skipped) == 1
    })
    .await;
    // Nothing reached the claim-response channel: the next thing there is
    // a marker published after the call had ended.
    let marker = ClaimResponse {
        request_id: "marker".into(),
        server_id: "nobody".into(),
    };
    bus.publish(&rclaim_ch, wire::encode_msg(&marker))
        .await
        .unwrap();
    assert_eq!(next::<ClaimResponse>(&mut rclaims, "marker").await, marker);

    // 3. The operator switches the skip off: the same caller gets the
    // classic handshake, and grants.
    skip.store(false, Ordering::SeqCst);
    let res: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 9,
                text: "".into(),
            },
        )
        .await
        .expect("classic call");
    assert_eq!(res.n, 9);
    let sent: Request = next(&mut requests, "request").await;
    assert!(sent.skip_claim);
    let bid: ClaimRequest = next(&mut announcements, "bid").await;
    assert!(!bid.handling);
    let grant: ClaimResponse = next(&mut rclaims, "grant").await;
    assert_eq!(
        (grant.request_id.as_str(), grant.server_id.as_str()),
        (sent.request_id.as_str(), "skipper")
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    s.shutdown().await;

    // 4. A classic server (never opted in) with an advertising caller.
    let classic = RpcServer::new(
        f.connect().await,
        SERVICE,
        ServerOptions::default().server_id("classic"),
    )
    .await
    .unwrap();
    counting(&classic, &NORMAL_RPC, &[], count.clone()).await;
    settle(f).await;
    let res: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 10,
                text: "".into(),
            },
        )
        .await
        .expect("classic server");
    assert_eq!(res.text, "classic");
    let sent: Request = next(&mut requests, "request").await;
    assert!(sent.skip_claim);
    let bid: ClaimRequest = next(&mut announcements, "bid").await;
    assert_eq!((bid.server_id.as_str(), bid.handling), ("classic", false));
    let grant: ClaimResponse = next(&mut rclaims, "grant").await;
    assert_eq!(grant.server_id, "classic");

    // Multi requests never advertise.
    let ms = RpcServer::new(f.connect().await, SERVICE, ServerOptions::default())
        .await
        .unwrap();
    counting(&ms, &GET_STATS, &[], count.clone()).await;
    let mut multi = bus
        .subscribe(
            &channels::rpc_channel(SERVICE, GET_STATS.name(), &[], false),
            10,
        )
        .await
        .unwrap();
    settle(f).await;
    let _ = c
        .multi(&GET_STATS, (), Num::default())
        .timeout(Duration::from_millis(200))
        .await
        .expect("multi");
    let sent: Request = next(&mut multi, "multi request").await;
    assert!(sent.multi && !sent.skip_claim);
    classic.shutdown().await;
    ms.shutdown().await;
}

/// A response that reaches the caller before the announcement is the
/// call's result; an announcement with no response ends in
/// `deadline_exceeded` under the request timeout, not `unavailable`.
pub async fn claim_skip_response_first_and_timeout(f: &dyn BusFactory) {
    // A hand-played server: answers before it announces, or announces and
    // never answers.
    let bus = f.connect().await;
    let req_ch = channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true);
    let mut requests = bus.subscribe(&req_ch, 10).await.unwrap();
    let c = client(f).await;
    settle(f).await;
    let res_ch = channels::response_channel(SERVICE, c.id());
    let claim_ch = channels::claim_request_channel(SERVICE, c.id());

    let bus2 = bus.clone();
    let call = tokio::spawn(async move {
        let _ = &bus2;
        c.unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 1,
                text: "".into(),
            },
        )
        .timeout(Duration::from_secs(10))
        .await
        .map(|r| (r, c))
    });
    let req: Request = next(&mut requests, "request").await;
    let answer = Response {
        request_id: req.request_id.clone(),
        server_id: "hand".into(),
        sent_at: wire::now_ns(),
        raw_response: Bytes::from(
            Num {
                n: 41,
                text: "early".into(),
            }
            .encode_to_vec(),
        ),
        ..Default::default()
    };
    bus.publish(&res_ch, wire::encode_msg(&answer))
        .await
        .unwrap();
    let (res, c) = call
        .await
        .unwrap()
        .expect("the early response is the result");
    assert_eq!((res.n, res.text.as_str()), (41, "early"));

    // On a queue method an early error response is final too.
    let call = {
        let c = c.clone();
        tokio::spawn(async move {
            c.unary(&NORMAL_RPC, (), Num::default())
                .timeout(Duration::from_secs(10))
                .await
        })
    };
    let req: Request = next(&mut requests, "request").await;
    let failed = Response {
        request_id: req.request_id.clone(),
        server_id: "hand".into(),
        error: "nope".into(),
        code: "not_found".into(),
        ..Default::default()
    };
    bus.publish(&res_ch, wire::encode_msg(&failed))
        .await
        .unwrap();
    let e = call.await.unwrap().expect_err("error response");
    assert_eq!((e.code(), e.message()), (ErrorCode::NotFound, "nope"));

    // Announced and never answered: the request timeout, not the
    // selection timeout, ends the call.
    let started = Instant::now();
    let call = {
        let c = c.clone();
        tokio::spawn(async move {
            c.unary(&NORMAL_RPC, (), Num::default())
                .timeout(Duration::from_secs(3))
                .await
        })
    };
    let req: Request = next(&mut requests, "request").await;
    let ann = ClaimRequest {
        request_id: req.request_id.clone(),
        server_id: "hand".into(),
        affinity: 1.0,
        handling: true,
    };
    bus.publish(&claim_ch, wire::encode_msg(&ann))
        .await
        .unwrap();
    let e = call.await.unwrap().expect_err("no response");
    assert_eq!(
        (e.code(), e.message()),
        (ErrorCode::DeadlineExceeded, "request timed out")
    );
    // Past the 1 s selection timeout: the announcement ended selection.
    assert!(started.elapsed() >= Duration::from_millis(2500));
}

/// The observer sees every request received and expired, and each claim
/// outcome: granted, lost to a peer, timed out, skipped.
pub async fn observer_claim_outcomes(f: &dyn BusFactory) {
    let events = Arc::new(Events::default());
    let metrics = Arc::new(MetricEvents::default());
    let skip = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let mk = |id: &'static str| {
        let (events, metrics, skip) = (events.clone(), metrics.clone(), skip.clone());
        async move {
            RpcServer::new(
                f.connect().await,
                SERVICE,
                ServerOptions::default()
                    .server_id(id)
                    .interceptor(events)
                    .interceptor(Metrics::new(metrics))
                    .skip_claim(move || skip.load(Ordering::SeqCst)),
            )
            .await
            .unwrap()
        }
    };
    let a = mk("a").await;
    let b = mk("b").await;
    counting(&a, &NORMAL_RPC, &[], count.clone()).await;
    for (s, score) in [(&a, 0.9f32), (&b, 0.5)] {
        s.route(&INTENSIVE_RPC)
            .affinity(move |_: &Num| score)
            .handle(|_ctx: Context, r: Num| async move { Ok(r) })
            .await
            .unwrap();
    }
    let c = client(f).await;
    settle(f).await;

    // granted (classic queue call), skipped (the same with the switch on)
    c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
    skip.store(true, Ordering::SeqCst);
    c.unary(&NORMAL_RPC, (), Num::default()).await.unwrap();
    // granted to a, lost by b
    let r: Num = c
        .unary(
            &INTENSIVE_RPC,
            (),
            Num {
                n: 3,
                text: "".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.n, 3);
    // timed out: a caller that never answers the bid
    let bus = f.connect().await;
    let dead = psrpc::protocol::id::new_id(psrpc::protocol::id::CLIENT_PREFIX);
    let req_ch = channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true);
    bus.publish(
        &req_ch,
        wire::encode_msg(&raw_request(&dead, 0, SEC / 2, false)),
    )
    .await
    .unwrap();
    // expired on arrival, 2 s late
    bus.publish(
        &req_ch,
        wire::encode_msg(&raw_request(&dead, 0, -2 * SEC, false)),
    )
    .await
    .unwrap();

    crate::eventually("every outcome", WAIT, || {
        events.claims("NormalRPC", ClaimOutcome::Granted) == 1
            && events.claims("NormalRPC", ClaimOutcome::Skipped) == 1
            && events.claims("NormalRPC", ClaimOutcome::TimedOut) == 1
            && events.claims("IntensiveRPC", ClaimOutcome::Granted) == 1
            && events.claims("IntensiveRPC", ClaimOutcome::LostToPeer) == 1
            && events
                .all()
                .iter()
                .any(|e| matches!(e, Event::Expired(m, late) if m == "NormalRPC" && *late >= Duration::from_secs(2)))
    })
    .await;
    assert_eq!(events.received("NormalRPC"), 4, "{:#?}", events.all());
    // Every server of the affinity method received the request.
    assert_eq!(events.received("IntensiveRPC"), 2);
    // The metrics middleware saw the same events.
    crate::eventually("the metrics middleware saw them too", WAIT, || {
        metrics.0.all().len() == events.all().len()
    })
    .await;
    for e in events.all() {
        match e {
            Event::Claim(_, ClaimOutcome::Skipped, wait) => assert_eq!(wait, Duration::ZERO),
            Event::Claim(_, ClaimOutcome::TimedOut, wait) => {
                assert!(wait >= Duration::from_millis(300), "{wait:?}")
            }
            _ => {}
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Queue methods refuse affinity settings: a server's affinity function at
/// registration, a caller's affinity selection at the call (nothing is
/// published).
pub async fn queue_rejects_affinity(f: &dyn BusFactory) {
    let s = RpcServer::new(f.connect().await, SERVICE, ServerOptions::default())
        .await
        .unwrap();
    let e = s
        .route(&NORMAL_RPC)
        .affinity(|_: &Num| 1.0)
        .handle(|_ctx: Context, r: Num| async move { Ok(r) })
        .await
        .expect_err("affinity function on a queue method");
    assert_eq!(
        (e.code(), e.message()),
        (
            ErrorCode::InvalidArgument,
            "NormalRPC: affinity function is not valid on a queue rpc"
        )
    );
    // Nothing was reserved: the method registers without one.
    let count = Arc::new(AtomicUsize::new(0));
    counting(&s, &NORMAL_RPC, &[], count.clone()).await;

    let bus = f.connect().await;
    let mut requests = bus
        .subscribe(
            &channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true),
            10,
        )
        .await
        .unwrap();
    let c = client(f).await;
    settle(f).await;
    let pick: psrpc::select::SelectionFn = Arc::new(|_| Ok("x".to_owned()));
    for sel in [
        SelectionOptions {
            minimum_affinity: 0.5,
            ..SelectionOptions::queue_defaults(Duration::from_secs(1))
        },
        SelectionOptions {
            maximum_affinity: 0.5,
            ..Default::default()
        },
        SelectionOptions {
            selection_fn: Some(pick),
            ..Default::default()
        },
    ] {
        let e = c
            .unary(
                &NORMAL_RPC,
                (),
                Num {
                    n: 1,
                    text: "".into(),
                },
            )
            .selection(sel)
            .await
            .expect_err("affinity selection on a queue method");
        assert_eq!(
            (e.code(), e.message()),
            (
                ErrorCode::InvalidArgument,
                "NormalRPC: affinity selection is not valid on a queue rpc"
            )
        );
    }
    // The other selection options stay allowed.
    let r: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 2,
                text: "".into(),
            },
        )
        .selection(SelectionOptions {
            accept_first_available: true,
            affinity_timeout: Duration::from_secs(2),
            short_circuit_timeout: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("plain queue selection");
    assert_eq!(r.n, 2);
    // The first request on the bus is that one: the rejected calls
    // published nothing.
    let first: Request = next(&mut requests, "request").await;
    assert_eq!(Num::decode(first.raw_request).unwrap().n, 2);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    s.shutdown().await;
}

/// Claims whose caller never answers, and remembered decisions nobody
/// asks for, are all released once their requests expire, with no further
/// traffic.
pub async fn claims_released_at_expiry(f: &dyn BusFactory) {
    const N: usize = 1500;
    let s = RpcServer::new(
        f.connect().await,
        SERVICE,
        ServerOptions::default().server_id("mem"),
    )
    .await
    .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    counting(&s, &NORMAL_RPC, &[], count.clone()).await;
    counting(&s, &INTENSIVE_RPC, &[], count.clone()).await;
    let bus: DynBus = f.connect().await;
    settle(f).await;
    let dead = psrpc::protocol::id::new_id(psrpc::protocol::id::CLIENT_PREFIX);
    let queue = channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true);
    let affinity = channels::rpc_channel(SERVICE, INTENSIVE_RPC.name(), &[], false);
    let decisions = channels::claim_response_channel(SERVICE, INTENSIVE_RPC.name(), &[]);
    for i in 0..N {
        for ch in [&queue, &affinity] {
            let r = raw_request(&dead, i as i64, 4 * SEC, false);
            bus.publish(ch, wire::encode_msg(&r)).await.unwrap();
        }
        // Decisions for requests this server never saw: remembered a while.
        let d = ClaimResponse {
            request_id: psrpc::protocol::id::new_request_id(),
            server_id: "other".into(),
        };
        bus.publish(&decisions, wire::encode_msg(&d)).await.unwrap();
    }
    crate::eventually("every claim pending", WAIT, || s.pending_claims() == 2 * N).await;
    crate::eventually("every claim released", WAIT, || {
        s.claim_table_entries() == 0
    })
    .await;
    assert_eq!(s.pending_claims(), 0);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    s.shutdown().await;
}

/// A server that sees requests only a skewed clock explains counts them
/// (and warns), drops the expired ones as expired, and never gives a
/// handler more time than the caller asked for.
pub async fn clock_skew_counted_and_deadline_bounded(f: &dyn BusFactory) {
    let bus_s: DynBus = f.connect().await;
    let s = RpcServer::new(
        bus_s.clone(),
        SERVICE,
        ServerOptions::default().server_id("clock"),
    )
    .await
    .unwrap();
    let budgets = Arc::new(Mutex::new(Vec::<Duration>::new()));
    {
        let budgets = budgets.clone();
        s.route(&SINGLE_RPC)
            .handle(move |ctx: Context, r: Num| {
                let left = ctx
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                budgets.lock().unwrap().push(left.expect("a deadline"));
                async move { Ok(r) }
            })
            .await
            .unwrap();
    }
    let bus = f.connect().await;
    settle(f).await;
    let dead = psrpc::protocol::id::new_id(psrpc::protocol::id::CLIENT_PREFIX);
    let ch = channels::rpc_channel(SERVICE, SINGLE_RPC.name(), &[], true);
    let now = wire::now_ns();

    // The caller's clock is 5 s ahead of ours (ours is behind): it asked
    // for 1 s; by our clock the expiry is 6 s away.
    let mut ahead = raw_request(&dead, 1, 0, false);
    ahead.sent_at = now + 5 * SEC;
    ahead.expiry = now + 6 * SEC;
    bus.publish(&ch, wire::encode_msg(&ahead)).await.unwrap();
    crate::eventually("the handler ran", WAIT, || {
        budgets.lock().unwrap().len() == 1
    })
    .await;
    let left = budgets.lock().unwrap()[0];
    assert!(
        left <= Duration::from_secs(1),
        "the handler got {left:?}, more than the 1 s asked for"
    );
    assert_eq!(s.clock_skew_suspected(), 1);

    // Our clock is 5 s ahead of the caller's: its request arrives expired.
    let before = bus_s.drops().count(DropReason::Expired);
    let mut late = raw_request(&dead, 2, 0, false);
    late.sent_at = now - 6 * SEC;
    late.expiry = now - 5 * SEC;
    bus.publish(&ch, wire::encode_msg(&late)).await.unwrap();
    crate::eventually("the expired request counted", WAIT, || {
        bus_s.drops().count(DropReason::Expired) > before && s.clock_skew_suspected() == 2
    })
    .await;
    // A request that is in time is served as usual, and not suspected.
    let fine = raw_request(&dead, 3, 3 * SEC, false);
    bus.publish(&ch, wire::encode_msg(&fine)).await.unwrap();
    crate::eventually("the handler ran again", WAIT, || {
        budgets.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(s.clock_skew_suspected(), 2);
    s.shutdown().await;
}
