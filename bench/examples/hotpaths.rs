//! The hot paths of psrpc on the local bus, one at a time, for an
//! instruction count under callgrind (run through `bench/callgrind`, which
//! documents how the figures are made repeatable to the instruction).
//!
//! ```text
//! hotpaths PATH [OPS] [WARMUP] [BUS]
//! ```
//!
//! `PATH` is one of `unary`, `unary-mw`, `affinity`, `multi`, `stream`,
//! `stream-open`, `sub`, `trigger` and `floor-multi` (see [`Path`]). The
//! process starts three servers and one client of the benchmark service on
//! one [`LocalBus`] (`floor-multi` also opens a bare client and three echo
//! peers, see [`Floor`]), on a current-thread tokio runtime, does `WARMUP`
//! operations (default 200) so that every lazy initialisation and buffer
//! growth is behind it, then `OPS` operations (default 1000) inside
//! [`measured_ops`], the one function whose instructions callgrind collects
//! (`--toggle-collect=*measured_ops*`).
//! Every operation checks its answer, so a path that breaks fails loudly
//! instead of measuring something cheaper.
//!
//! `BUS` is `local` (the default) or a `redis://HOST:PORT` or
//! `nats://HOST:PORT` URL: then every server and the client get a
//! connection of their own, as separate processes would, and the count is
//! of this process's side of the networked path (the broker and the
//! kernel are not counted). Operations are still one at a time, so each
//! waits for the network and the count does not depend on how messages
//! happen to be batched.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::middleware::metrics::{Metrics, MetricsFacade};
use psrpc::middleware::recovery::Recovery;
use psrpc::middleware::trace::Tracing;
use psrpc::{
    Channel, ClientOptions, ClientStream, Context, LocalBus, MessageBus, Method, RpcClient,
    RpcServer, SelectionOptions, ServerOptions, ServerStream, Subscription, bus::RawSubscription,
};

/// Messages generated from `proto/bench.proto` (package `psrpcbench`).
#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/psrpcbench.rs"));
}

use pb::{Event, Ignored, Msg, Req, Res};

/// `Bench.Unary`: queue routing with the claim handshake.
static UNARY: Method<Req, Res> = Method::queue("Unary");
/// `Bench.Affinity`: affinity routing.
static AFFINITY: Method<Req, Res> = Method::affinity("Affinity");
/// `Bench.Multi`: every server answers.
static MULTI: Method<Req, Res> = Method::multi("Multi");
/// `Bench.Trigger`: makes a server publish one event and one broadcast.
static TRIGGER: Method<Req, Res> = Method::queue("Trigger");
/// `Bench.Broadcast`: fan-out subscription on a topic.
static BROADCAST: Method<Ignored, Event> = Method::multi("Broadcast");
/// `BenchEvents.Events`: queue subscription.
static EVENTS: Method<Ignored, Event> = Method::queue("Events");
/// `Bench.Echo`: a stream.
static ECHO: Method<Msg, Msg> = Method::queue("Echo");

/// Servers started, as psrpc-bench does by default.
const SERVERS: usize = 3;
/// Topic of the broadcasts.
const TOPIC: &str = "t1";
/// Request payload: 16 bytes, psrpc-bench's default.
const PAYLOAD: &[u8] = b"psrpc-bench-0123";

/// One hot path; one operation of each is:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `unary`: one `Unary` call (queue routing, claim handshake).
    Unary,
    /// `unary-mw`: the same call with the shipped middleware installed on
    /// both sides, as `psrpc-bench --middleware` does (tracing and metrics;
    /// recovery on the servers): what the interceptor path costs.
    UnaryMw,
    /// `affinity`: one `Affinity` call, selection ending at affinity 1.0.
    Affinity,
    /// `multi`: one `Multi` call, complete when all 3 servers answered.
    Multi,
    /// `stream`: one message echoed on an open `Echo` stream.
    Stream,
    /// `stream-open`: psrpc-bench's `stream open+close` row: an `Echo`
    /// stream opened (claim handshake, ack) and closed.
    StreamOpen,
    /// `sub`: one event a server publishes on the queue subscription
    /// `Events`, received by the client's subscription.
    Sub,
    /// `trigger`: psrpc-bench's `sub trigger->event+bcast` row: a `Trigger`
    /// call whose handler publishes one event and one broadcast, complete
    /// when both arrived.
    Trigger,
    /// `floor-multi`: no RPC at all, the bare bus doing what a `multi` call
    /// puts on it (psrpc-bench's floor of the multi rows): one publish
    /// delivered to 3 echo peers, each on its own connection, each echoing
    /// it back on the client's channel. `multi` minus this is what the
    /// runtime costs above the bus.
    FloorMulti,
}

impl Path {
    const ALL: [(&'static str, Path); 9] = [
        ("unary", Path::Unary),
        ("unary-mw", Path::UnaryMw),
        ("affinity", Path::Affinity),
        ("multi", Path::Multi),
        ("stream", Path::Stream),
        ("stream-open", Path::StreamOpen),
        ("sub", Path::Sub),
        ("trigger", Path::Trigger),
        ("floor-multi", Path::FloorMulti),
    ];

    fn parse(s: &str) -> Option<Path> {
        Path::ALL.iter().find(|(n, _)| *n == s).map(|(_, p)| *p)
    }
}

/// The servers and the client, and what a path keeps open.
struct Fixture {
    client: RpcClient,
    /// The servers' `Bench` and `BenchEvents` halves.
    servers: Vec<(RpcServer, RpcServer)>,
    /// Open for the `stream` path.
    stream: Option<ClientStream<Msg, Msg>>,
    /// The `BenchEvents` client of the `sub` and `trigger` paths.
    events_client: Option<RpcClient>,
    /// Joined for the `sub` and `trigger` paths.
    events: Option<Subscription<Event>>,
    /// Joined for the `trigger` path.
    bcast: Option<Subscription<Event>>,
    /// The `floor-multi` path's channels, subscription and echo peers.
    floor: Option<Floor>,
    seq: i64,
}

/// The bare bus of the `floor-multi` path.
struct Floor {
    bus: DynBus,
    req: Channel,
    replies: RawSubscription,
    _echoes: Vec<tokio::task::JoinHandle<()>>,
}

/// A channel of the floor: the same name on every bus, read directly.
fn floor_channel(name: &str) -> Channel {
    Channel {
        legacy: name.to_owned(),
        server: name.to_owned(),
        local: String::new(),
    }
}

impl Floor {
    /// The client's reply subscription on `bus` and one echo peer per
    /// connection in `peers`.
    async fn start(bus: DynBus, peers: Vec<DynBus>) -> Floor {
        let req = floor_channel("hotpaths.floor.req");
        let rep = floor_channel("hotpaths.floor.rep");
        let replies = bus.subscribe(&rep, 100).await.expect("floor replies");
        let mut echoes = Vec::new();
        for peer in peers {
            let mut sub = peer.subscribe(&req, 100).await.expect("floor echo");
            let rep = rep.clone();
            echoes.push(tokio::spawn(async move {
                while let Some(m) = sub.recv().await {
                    peer.publish(&rep, m).await.expect("floor echo publish");
                }
            }));
        }
        Floor {
            bus,
            req,
            replies,
            _echoes: echoes,
        }
    }
}

/// The handler of the unary methods: echoes the request.
fn echo(id: String) -> impl Fn(Context, Req) -> std::future::Ready<psrpc::Result<Res>> {
    move |_ctx: Context, req: Req| {
        std::future::ready(Ok(Res {
            seq: req.seq,
            server_id: id.clone(),
            payload: req.payload,
        }))
    }
}

/// Starts server `i` as psrpc-bench does (affinity 1.0, 0.75, 0.5), with
/// the shipped middleware when `middleware`.
async fn start_server(bus: &DynBus, i: usize, middleware: bool) -> (RpcServer, RpcServer) {
    let id = format!("bench-server-{i}");
    let opts = || {
        let o = ServerOptions::default().server_id(&id);
        if middleware {
            o.interceptor(Tracing)
                .interceptor(Metrics::new(MetricsFacade::shared()))
                .interceptor(Recovery)
        } else {
            o
        }
    };
    let bench = RpcServer::new(bus.clone(), "Bench", opts()).await.unwrap();
    let events = RpcServer::new(bus.clone(), "BenchEvents", opts())
        .await
        .unwrap();
    bench
        .route(&UNARY)
        .handle(echo(id.clone()))
        .await
        .expect("register Unary");
    let affinity = (1.0 - 0.25 * i as f32).max(0.1);
    bench
        .route(&AFFINITY)
        .affinity(move |_: &Req| affinity)
        .handle(echo(id.clone()))
        .await
        .expect("register Affinity");
    bench
        .route(&MULTI)
        .handle(echo(id.clone()))
        .await
        .expect("register Multi");
    bench
        .stream_route(&ECHO)
        .handle(|mut st: ServerStream<Msg, Msg>| async move {
            while let Some(m) = st.recv().await? {
                st.send(m).await?;
            }
            Ok(())
        })
        .await
        .expect("register Echo");
    let counter = Arc::new(AtomicI64::new(0));
    let (b, e) = (bench.clone(), events.clone());
    bench
        .route(&TRIGGER)
        .handle(move |_ctx: Context, req: Req| {
            let (bench, events, counter, id) = (b.clone(), e.clone(), counter.clone(), id.clone());
            async move {
                let event = || Event {
                    seq: counter.fetch_add(1, Ordering::Relaxed) + 1,
                    text: req.text.clone(),
                    server_id: id.clone(),
                };
                events.publish(&EVENTS, (), &event()).await?;
                bench
                    .publish(&BROADCAST, std::slice::from_ref(&req.text), &event())
                    .await?;
                Ok(Res {
                    seq: req.seq,
                    server_id: id,
                    payload: Bytes::new(),
                })
            }
        })
        .await
        .expect("register Trigger");
    (bench, events)
}

impl Fixture {
    /// The servers, the client, and what `path` keeps open.
    async fn start(path: Path, url: &str) -> Fixture {
        let local = LocalBus::new();
        // A connection of its own per party on a networked bus.
        let connect = || async {
            let bus: DynBus = if url == "local" {
                Arc::new(local.clone())
            } else if url.starts_with("redis://") {
                Arc::new(psrpc_redis::RedisBus::connect(url).await.expect("redis"))
            } else {
                Arc::new(psrpc_nats::NatsBus::connect(url).await.expect("nats"))
            };
            bus
        };
        let mut floor = None;
        if path == Path::FloorMulti {
            let mut peers = Vec::new();
            for _ in 0..SERVERS {
                peers.push(connect().await);
            }
            floor = Some(Floor::start(connect().await, peers).await);
        }
        let mut servers = Vec::new();
        for i in 0..SERVERS {
            servers.push(start_server(&connect().await, i, path == Path::UnaryMw).await);
        }
        let bus = connect().await;
        let mut opts = ClientOptions::default().client_id("bench-client");
        if path == Path::UnaryMw {
            opts = opts
                .interceptor(Tracing)
                .interceptor(Metrics::new(MetricsFacade::shared()));
        }
        let client = RpcClient::new(bus.clone(), "Bench", opts)
            .await
            .expect("client");
        let mut fx = Fixture {
            client,
            servers,
            stream: None,
            events_client: None,
            events: None,
            bcast: None,
            floor,
            seq: 0,
        };
        match path {
            Path::Stream => {
                fx.stream = Some(fx.client.stream(&ECHO, ()).await.expect("open stream"));
            }
            Path::Sub | Path::Trigger => {
                let events_client = RpcClient::new(
                    bus.clone(),
                    "BenchEvents",
                    ClientOptions::default().client_id("bench-events-client"),
                )
                .await
                .expect("events client");
                fx.events = Some(
                    events_client
                        .subscribe(&EVENTS, ())
                        .await
                        .expect("subscribe Events"),
                );
                fx.bcast = Some(
                    fx.client
                        .subscribe(&BROADCAST, &[TOPIC.to_owned()])
                        .await
                        .expect("subscribe Broadcast"),
                );
                fx.events_client = Some(events_client);
            }
            _ => {}
        }
        fx
    }

    fn req(&mut self, text: &str, count: i32) -> Req {
        self.seq += 1;
        Req {
            seq: self.seq,
            text: text.to_owned(),
            payload: Bytes::from_static(PAYLOAD),
            count,
        }
    }

    /// One operation of `path`; panics on a wrong or missing answer.
    async fn op(&mut self, path: Path) {
        match path {
            Path::Unary | Path::UnaryMw => {
                let req = self.req("", 0);
                let res: Res = self.client.unary(&UNARY, (), req).await.expect("unary");
                assert_eq!(res.seq, self.seq);
            }
            Path::Affinity => {
                let req = self.req("", 0);
                let res: Res = self
                    .client
                    .unary(&AFFINITY, (), req)
                    .selection(SelectionOptions {
                        maximum_affinity: 1.0,
                        ..Default::default()
                    })
                    .await
                    .expect("affinity");
                assert_eq!(res.seq, self.seq);
            }
            Path::Multi => {
                let req = self.req("", 0);
                let mut s = self.client.multi(&MULTI, (), req).await.expect("multi");
                for _ in 0..SERVERS {
                    let r = s.next().await.expect("multi response").expect("multi");
                    assert_eq!(r.seq, self.seq);
                }
            }
            Path::Stream => {
                self.seq += 1;
                let st = self.stream.as_mut().expect("stream");
                st.send(Msg {
                    seq: self.seq,
                    payload: Bytes::from_static(PAYLOAD),
                })
                .await
                .expect("stream send");
                let m = st.recv().await.expect("echo").expect("a message");
                assert_eq!(m.seq, self.seq);
            }
            Path::StreamOpen => {
                let st: ClientStream<Msg, Msg> =
                    self.client.stream(&ECHO, ()).await.expect("open stream");
                st.close().await.expect("close stream");
            }
            Path::Sub => {
                self.seq += 1;
                let event = Event {
                    seq: self.seq,
                    text: TOPIC.to_owned(),
                    server_id: "bench-server-0".to_owned(),
                };
                self.servers[0]
                    .1
                    .publish(&EVENTS, (), &event)
                    .await
                    .expect("publish");
                let got = self.events.as_mut().expect("events").recv().await;
                assert_eq!(got.expect("event").seq, self.seq);
            }
            Path::FloorMulti => {
                self.seq += 1;
                let f = self.floor.as_mut().expect("floor");
                // 16 bytes, as psrpc-bench's floor payload.
                let mut msg = self.seq.to_le_bytes().to_vec();
                msg.extend_from_slice(&PAYLOAD[8..]);
                let msg = Bytes::from(msg);
                f.bus.publish(&f.req, msg.clone()).await.expect("publish");
                for _ in 0..SERVERS {
                    // Bounded: a peer that failed must fail the run, not hang it.
                    let echo = tokio::time::timeout(Duration::from_secs(10), f.replies.recv())
                        .await
                        .expect("an echo within 10 s")
                        .expect("echo");
                    assert_eq!(echo, msg);
                }
            }
            Path::Trigger => {
                let req = self.req(TOPIC, 1);
                let _: Res = self.client.unary(&TRIGGER, (), req).await.expect("trigger");
                self.events.as_mut().expect("events").recv().await;
                let b = self.bcast.as_mut().expect("bcast").recv().await;
                assert_eq!(b.expect("broadcast").text, TOPIC);
            }
        }
    }

    async fn run(&mut self, path: Path, ops: usize) {
        for _ in 0..ops {
            self.op(path).await;
        }
    }
}

/// The measured operations: callgrind collects inside this function only.
#[inline(never)]
fn measured_ops(rt: &tokio::runtime::Runtime, fx: &mut Fixture, path: Path, ops: usize) {
    rt.block_on(fx.run(path, ops));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        let names: Vec<_> = Path::ALL.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: hotpaths {} [OPS] [WARMUP] [local|redis://HOST:PORT|nats://HOST:PORT]",
            names.join("|")
        );
        ExitCode::from(2)
    };
    let Some(path) = args.first().and_then(|a| Path::parse(a)) else {
        return usage();
    };
    let num = |i: usize, default: usize| args.get(i).map_or(Some(default), |a| a.parse().ok());
    let (Some(ops), Some(warmup)) = (num(1, 1000), num(2, 200)) else {
        return usage();
    };
    let url = args.get(3).map_or("local", String::as_str);
    if !(url == "local" || url.starts_with("redis://") || url.starts_with("nats://")) {
        return usage();
    }
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_time();
    if url != "local" {
        rt.enable_io();
    }
    let rt = rt.build().expect("tokio runtime");
    let mut fx = rt.block_on(Fixture::start(path, url));
    rt.block_on(fx.run(path, warmup));
    measured_ops(&rt, &mut fx, path, std::hint::black_box(ops));
    println!(
        "{} {ops}",
        Path::ALL.iter().find(|(_, p)| *p == path).unwrap().0
    );
    rt.block_on(async {
        if let Some(st) = fx.stream.take() {
            let _ = st.close().await;
        }
        for (b, e) in &fx.servers {
            b.kill();
            e.kill();
        }
    });
    ExitCode::SUCCESS
}
