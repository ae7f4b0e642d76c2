//! `psrpc-bench`: measures every psrpc RPC kind on a bus against the raw
//! floor of that bus (see BENCH.md).
//!
//! Buses: the in-process `local` bus, whose floor is a bare tokio channel
//! ping-pong, and `redis://` / `nats://`, whose floor is a bare
//! publish/subscribe ping-pong through the psrpc `MessageBus` API between
//! separate connections of the same bus. Floors have the same number of hops
//! as the row's operation and are measured in the same run with the same
//! concurrency.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use psrpc::bus::DynBus;
use psrpc::middleware::metrics::MetricsFacade;
use psrpc::{
    Channel, ClientOptions, CompressionOptions, Context, LocalBus, MessageBus, MethodInfo,
    RpcClient, RpcServer, SelectionOptions, ServerOptions, ServerStream,
};
use psrpc_nats::NatsBus;
use psrpc_redis::RedisBus;
use tokio::sync::mpsc;

/// Messages generated from `proto/bench.proto` (package `psrpcbench`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/psrpcbench.rs"));
}

use pb::{Event, Msg, Req, Res};

/// `Bench.Unary`: queue routing with the claim handshake.
static UNARY: MethodInfo = MethodInfo::queue("Unary");
/// `Bench.Affinity`: affinity routing.
static AFFINITY: MethodInfo = MethodInfo::affinity("Affinity");
/// `Bench.Multi`: every server answers.
static MULTI: MethodInfo = MethodInfo::multi("Multi");
/// `Bench.TopicUnary`: queue routing on a topic.
static TOPIC_UNARY: MethodInfo = MethodInfo::queue("TopicUnary");
/// `Bench.Trigger`: makes a server publish events and broadcasts.
static TRIGGER: MethodInfo = MethodInfo::queue("Trigger");
/// `Bench.Broadcast`: fan-out subscription on a topic.
static BROADCAST: MethodInfo = MethodInfo::multi("Broadcast");
/// `BenchEvents.Events`: queue subscription.
static EVENTS: MethodInfo = MethodInfo::queue("Events");
/// `Bench.Echo`: a stream (queue flags: claimed by one server).
static ECHO: MethodInfo = MethodInfo::queue("Echo");

/// Timeout of every benchmark call and of every wait for an update.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest floor measurement per row (floors are cheap and stable).
const MAX_FLOOR_DURATION: Duration = Duration::from_secs(1);

const USAGE: &str = "\
usage: psrpc-bench [options]
  --bus local|redis://HOST:PORT|nats://HOST:PORT   (default local)
  --mode all|server|client   all: servers and client in one process (default all)
  --servers N        servers started (default 3)
  --expect N         how many servers answer Multi (default --servers)
  --duration D       each row, e.g. 5s, 500ms (default 5s)
  --conc N           in-flight calls / streams (default 64)
  --payload N        request payload bytes, text-like (default 16)
  --compress Q       gzip level 1..9 of every connection's publishes (bus
                     option, threshold 1024 B; default 0 = off)
  --tests LIST       unary,affinity,multi,stream,sub (default all)
  --topic T          topic of TopicUnary and Broadcast (default t1)
  --burst N          events per subscription burst (default 2000)
  --server-id PREFIX server i gets id PREFIX<i> (default bench-server-)
  --client-id ID     (default bench-client)
  --json FILE        machine-readable results beside the table
  --middleware       install the shipped middleware on client and servers
                     (tracing, metrics through the `metrics` facade, and
                     recovery on servers), to compare with a run without
  --skip-claim       servers opt in to claim skip: queue calls take an
                     announcement instead of the claim round trip";

/// Which bus mode the process runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Server,
    Client,
}

/// The parsed command line.
#[derive(Debug, Clone)]
struct Args {
    bus: String,
    mode: Mode,
    servers: usize,
    expect: usize,
    duration: Duration,
    conc: usize,
    payload: usize,
    /// gzip level of the connections' publishes; 0 = off.
    compress: u32,
    tests: Vec<String>,
    topic: String,
    burst: usize,
    server_id: String,
    client_id: String,
    json: Option<String>,
    /// Install the shipped middleware everywhere.
    middleware: bool,
    /// Servers opt in to claim skip.
    skip_claim: bool,
}

/// Parses `5s`, `500ms`, `100us`, `2m`, `1.5s` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ns, us, ms, s, m, h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        bus: "local".into(),
        mode: Mode::All,
        servers: 3,
        expect: 0,
        duration: Duration::from_secs(5),
        conc: 64,
        payload: 16,
        compress: 0,
        tests: ["unary", "affinity", "multi", "stream", "sub"]
            .map(String::from)
            .to_vec(),
        topic: "t1".into(),
        burst: 2000,
        server_id: "bench-server-".into(),
        client_id: "bench-client".into(),
        json: None,
        middleware: false,
        skip_claim: false,
    };
    let mut expect = None;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(String::new());
        }
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        let num = |v: String, k: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{k}: {v:?} is not a non-negative integer"))
        };
        match key.as_str() {
            "--bus" => a.bus = value()?,
            "--mode" => {
                a.mode = match value()?.as_str() {
                    "all" => Mode::All,
                    "server" => Mode::Server,
                    "client" => Mode::Client,
                    m => return Err(format!("--mode: {m:?} is not all, server or client")),
                }
            }
            "--servers" => a.servers = num(value()?, &key)?,
            "--expect" => expect = Some(num(value()?, &key)?),
            "--duration" => a.duration = parse_duration(&value()?)?,
            "--conc" => a.conc = num(value()?, &key)?.max(1),
            "--payload" => a.payload = num(value()?, &key)?,
            "--compress" => a.compress = num(value()?, &key)?.min(9) as u32,
            "--tests" => {
                a.tests = value()?
                    .split(',')
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect();
                for t in &a.tests {
                    if !["unary", "affinity", "multi", "stream", "sub"].contains(&t.as_str()) {
                        return Err(format!(
                            "--tests: unknown test {t:?} (unary, affinity, multi, stream, sub)"
                        ));
                    }
                }
            }
            "--topic" => a.topic = value()?,
            "--burst" => a.burst = num(value()?, &key)?.max(1),
            "--server-id" => a.server_id = value()?,
            "--client-id" => a.client_id = value()?,
            "--json" => a.json = Some(value()?),
            "--middleware" => a.middleware = true,
            "--skip-claim" => a.skip_claim = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    a.expect = expect.unwrap_or(a.servers);
    Ok(a)
}

/// The resident set size of this process, from `/proc/self/status`.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------
// Measurements

/// Sub-buckets per power of two of the latency histogram (precision 1/64).
const SUB_BUCKETS: u64 = 64;
/// Buckets of the latency histogram: enough for any `u64` of nanoseconds.
const BUCKETS: usize = (64 * SUB_BUCKETS + 2 * SUB_BUCKETS) as usize;

/// An HDR-like log-linear latency histogram in nanoseconds: exact below
/// 128 ns, then 64 buckets per power of two (about 1.6 % precision), in a
/// fixed ~30 KiB whatever the number of samples.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 2 * SUB_BUCKETS {
            return v as usize;
        }
        // v >> shift lies in [SUB_BUCKETS, 2 * SUB_BUCKETS).
        let shift = 63 - v.leading_zeros() as u64 - SUB_BUCKETS.trailing_zeros() as u64;
        (shift * SUB_BUCKETS + (v >> shift)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB_BUCKETS {
            return i;
        }
        let shift = i / SUB_BUCKETS - 1;
        let m = i - shift * SUB_BUCKETS;
        (m << shift) + ((1u64 << shift) >> 1)
    }

    fn add(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
    }

    /// The `p`-th percentile in nanoseconds (0 when empty).
    fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(BUCKETS - 1)
    }
}

/// What one row measured.
#[derive(Clone, Default)]
struct Stats {
    /// Successful operations.
    n: u64,
    /// Failed operations.
    errors: u64,
    /// Wall time of the whole row.
    elapsed: Duration,
    /// Latency of every successful operation.
    lat: Histogram,
    /// The first error seen, for the notes.
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.n += o.n;
        self.errors += o.errors;
        self.lat.merge(&o.lat);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn record(&mut self, r: Result<Duration, String>) {
        match r {
            Ok(d) => {
                self.n += 1;
                self.lat.add(d.as_nanos() as u64);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn ops_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.n as f64 / s } else { 0.0 }
    }

    /// The `p`-th percentile latency in microseconds.
    fn pct(&self, p: f64) -> f64 {
        self.lat.percentile(p) as f64 / 1e3
    }
}

/// The shape of a floor operation: `rounds` times, send the payload to
/// `fanout` echo peers and wait for all their replies. Each round is
/// `2 * fanout` channel hops (`fanout` deliveries out, `fanout` back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FloorKind {
    /// Ping-pong rounds with fan-out.
    PingPong {
        /// Peers each message goes to.
        fanout: usize,
        /// Round trips per operation.
        rounds: usize,
    },
    /// One-way stream of `n` messages through a channel of the subscription
    /// buffer size; counted per message.
    Stream {
        /// Messages per burst.
        n: usize,
    },
}

impl FloorKind {
    fn hops(&self) -> String {
        match *self {
            FloorKind::PingPong { fanout, rounds } => {
                if fanout == 1 {
                    format!("{}", 2 * rounds)
                } else {
                    format!("{}x(1+{fanout})", rounds)
                }
            }
            FloorKind::Stream { .. } => "1/ev".into(),
        }
    }
}

/// Runs `conc` workers of the floor `kind` for `duration`.
async fn measure_floor(kind: FloorKind, conc: usize, duration: Duration, payload: Bytes) -> Stats {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            match kind {
                FloorKind::PingPong { fanout, rounds } => {
                    floor_pingpong(fanout, rounds, end, payload).await
                }
                FloorKind::Stream { n } => floor_stream(n, end, payload).await,
            }
        }));
    }
    join_workers(tasks, start, "floor").await
}

/// One floor worker: `fanout` echo peer tasks on their own channels, replies
/// on one shared channel, as a client and its servers on a bus.
async fn floor_pingpong(fanout: usize, rounds: usize, end: Instant, payload: Bytes) -> Stats {
    let (reply_tx, mut reply_rx) = mpsc::channel::<Bytes>(fanout.max(1));
    let mut peers = Vec::with_capacity(fanout);
    for _ in 0..fanout {
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let reply = reply_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if reply.send(m).await.is_err() {
                    break;
                }
            }
        });
        peers.push(tx);
    }
    drop(reply_tx);
    let mut stats = Stats::default();
    while Instant::now() < end {
        let t0 = Instant::now();
        let mut ok = true;
        'op: for _ in 0..rounds {
            for p in &peers {
                if p.send(payload.clone()).await.is_err() {
                    ok = false;
                    break 'op;
                }
            }
            for _ in 0..fanout {
                if reply_rx.recv().await.is_none() {
                    ok = false;
                    break 'op;
                }
            }
        }
        stats.record(if ok {
            Ok(t0.elapsed())
        } else {
            Err("floor peer gone".into())
        });
    }
    stats
}

/// One floor worker for bursts: a producer task sends `n` messages through a
/// channel of the default subscription buffer size; each delivered message
/// is one operation, its latency measured from the start of the burst.
async fn floor_stream(n: usize, end: Instant, payload: Bytes) -> Stats {
    let mut stats = Stats::default();
    while Instant::now() < end {
        let (tx, mut rx) = mpsc::channel::<Bytes>(psrpc::client::DEFAULT_CHANNEL_SIZE);
        let t0 = Instant::now();
        let p = payload.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                if tx.send(p.clone()).await.is_err() {
                    break;
                }
            }
        });
        for _ in 0..n {
            match rx.recv().await {
                Some(_) => stats.record(Ok(t0.elapsed())),
                None => {
                    stats.record(Err("floor producer gone".into()));
                    break;
                }
            }
        }
    }
    stats
}

/// Aborts a task when dropped (stops a floor echo peer and, with it, its
/// subscription).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A floor channel: the same name as Redis channel and NATS subject, read
/// directly (no NATS demultiplexing, as for psrpc's client channels).
fn floor_channel(name: String) -> Channel {
    Channel {
        legacy: name.clone(),
        server: name,
        local: String::new(),
    }
}

/// Stats of a floor that could not even be set up.
fn failed(e: String) -> Stats {
    Stats {
        errors: 1,
        first_error: Some(e),
        ..Stats::default()
    }
}

/// One ping-pong floor worker on a bus, set up: the client side publishes on
/// `req` (fanned out by the bus to every echo peer, each on its own
/// connection) and reads the echoes on `replies`.
struct BusPingPong {
    req: Channel,
    replies: psrpc::bus::Subscription,
    _echoes: Vec<AbortOnDrop>,
}

/// Runs `conc` workers of the floor `kind` for `duration` over a bus: a bare
/// publish/subscribe ping-pong between the `client` connection and echo
/// peers on their own connections (`peers`, at least the fan-out), through
/// the psrpc [`MessageBus`] API with no RPC runtime in between. Subscriptions
/// are set up before the clock starts.
async fn measure_bus_floor(
    kind: FloorKind,
    conc: usize,
    duration: Duration,
    payload: Bytes,
    client: &DynBus,
    peers: &[DynBus],
) -> Stats {
    let tag = psrpc::id::new_id("");
    match kind {
        FloorKind::PingPong { fanout, rounds } => {
            let mut workers = Vec::with_capacity(conc);
            for w in 0..conc {
                match bus_pingpong_worker(&tag, w, fanout, client, peers).await {
                    Ok(wk) => workers.push(wk),
                    Err(e) => return failed(format!("floor setup: {e}")),
                }
            }
            let start = Instant::now();
            let end = start + duration;
            let mut tasks = Vec::with_capacity(conc);
            for wk in workers {
                let (client, payload) = (client.clone(), payload.clone());
                tasks.push(tokio::spawn(bus_pingpong(
                    wk, client, fanout, rounds, end, payload,
                )));
            }
            join_workers(tasks, start, "floor").await
        }
        FloorKind::Stream { n } => {
            let start = Instant::now();
            let end = start + duration;
            let mut tasks = Vec::with_capacity(conc);
            for w in 0..conc {
                let (client, peer) = (client.clone(), peers[0].clone());
                let (payload, tag) = (payload.clone(), tag.clone());
                tasks.push(tokio::spawn(async move {
                    bus_stream(&tag, w, client, peer, n, end, payload).await
                }));
            }
            join_workers(tasks, start, "floor").await
        }
    }
}

/// Sets up ping-pong floor worker `w`: its reply subscription on the client
/// connection and one echo peer per fan-out, each subscribed to the request
/// channel on its own connection.
async fn bus_pingpong_worker(
    tag: &str,
    w: usize,
    fanout: usize,
    client: &DynBus,
    peers: &[DynBus],
) -> psrpc::Result<BusPingPong> {
    let req = floor_channel(format!("psrpc-bench.floor.{tag}.{w}.req"));
    let rep = floor_channel(format!("psrpc-bench.floor.{tag}.{w}.rep"));
    let replies = client
        .subscribe(&rep, psrpc::client::DEFAULT_CHANNEL_SIZE)
        .await?;
    let mut echoes = Vec::with_capacity(fanout);
    for peer in &peers[..fanout] {
        let mut sub = peer
            .subscribe(&req, psrpc::client::DEFAULT_CHANNEL_SIZE)
            .await?;
        let (peer, rep) = (peer.clone(), rep.clone());
        echoes.push(AbortOnDrop(tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if peer.publish(&rep, m).await.is_err() {
                    break;
                }
            }
        })));
    }
    Ok(BusPingPong {
        req,
        replies,
        _echoes: echoes,
    })
}

/// One ping-pong floor worker on a bus: `rounds` times, publish the payload
/// (delivered to `fanout` echo peers) and wait for the `fanout` echoes.
async fn bus_pingpong(
    mut wk: BusPingPong,
    client: DynBus,
    fanout: usize,
    rounds: usize,
    end: Instant,
    payload: Bytes,
) -> Stats {
    let mut stats = Stats::default();
    while Instant::now() < end {
        let t0 = Instant::now();
        let r: Result<(), String> = async {
            for _ in 0..rounds {
                client
                    .publish(&wk.req, payload.clone())
                    .await
                    .map_err(|e| format!("floor publish: {e}"))?;
                for got in 0..fanout {
                    match tokio::time::timeout(CALL_TIMEOUT, wk.replies.recv()).await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err("floor reply subscription closed".into()),
                        Err(_) => {
                            return Err(format!(
                                "floor: {got} of {fanout} echoes within {CALL_TIMEOUT:?}"
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        stats.record(r.map(|()| t0.elapsed()));
    }
    stats
}

/// One burst floor worker on a bus: the peer connection publishes `n`
/// messages on a channel the client connection subscribed (with the default
/// subscription buffer size, once, before the clock starts, as the `sub
/// burst` row's subscription); each delivered message is one operation, its
/// latency measured from the start of the burst.
async fn bus_stream(
    tag: &str,
    w: usize,
    client: DynBus,
    peer: DynBus,
    n: usize,
    end: Instant,
    payload: Bytes,
) -> Stats {
    let mut stats = Stats::default();
    let ch = floor_channel(format!("psrpc-bench.floor.{tag}.{w}.burst"));
    let mut sub = match client
        .subscribe(&ch, psrpc::client::DEFAULT_CHANNEL_SIZE)
        .await
    {
        Ok(s) => s,
        Err(e) => return failed(format!("floor subscribe: {e}")),
    };
    while Instant::now() < end {
        let t0 = Instant::now();
        let (peer, p, ch) = (peer.clone(), payload.clone(), ch.clone());
        let producer = AbortOnDrop(tokio::spawn(async move {
            for _ in 0..n {
                if peer.publish(&ch, p.clone()).await.is_err() {
                    break;
                }
            }
        }));
        for got in 0..n {
            match tokio::time::timeout(CALL_TIMEOUT, sub.recv()).await {
                Ok(Some(_)) => stats.record(Ok(t0.elapsed())),
                Ok(None) => {
                    stats.record(Err("floor burst subscription closed".into()));
                    return stats;
                }
                Err(_) => {
                    stats.record(Err(format!(
                        "floor burst: {got} of {n} messages, then none within {CALL_TIMEOUT:?}"
                    )));
                    break;
                }
            }
        }
        drop(producer);
    }
    stats
}

// ---------------------------------------------------------------------------
// The servers

/// One benchmark server: `Bench` with every method, plus a `BenchEvents`
/// server that only publishes.
struct BenchServer {
    bench: RpcServer,
    events: RpcServer,
}

/// Starts server number `i` (0-based) on its own bus handle.
/// The options of every bench server (with `--middleware`, the shipped
/// middleware: tracing, metrics, recovery).
fn server_options(id: &str, args: &Args) -> ServerOptions {
    let mut o = ServerOptions::default().server_id(id);
    if args.skip_claim {
        o = o.skip_claim(|| true);
    }
    if args.middleware {
        o.traced().metrics(MetricsFacade::shared()).recovery()
    } else {
        o
    }
}

/// The options of the bench clients (with `--middleware`: tracing, metrics).
fn client_options(args: &Args) -> ClientOptions {
    let o = ClientOptions::default().client_id(&args.client_id);
    if args.middleware {
        o.traced().metrics(MetricsFacade::shared())
    } else {
        o
    }
}

async fn start_server(bus: DynBus, i: usize, args: &Args) -> psrpc::Result<BenchServer> {
    let id = format!("{}{i}", args.server_id);
    let bench = RpcServer::new(bus.clone(), "Bench", server_options(&id, args));
    let events = RpcServer::new(bus, "BenchEvents", server_options(&id, args));

    let echo = |id: String| {
        move |_ctx: Context, req: Req| {
            let server_id = id.clone();
            async move {
                Ok(Res {
                    seq: req.seq,
                    server_id,
                    payload: req.payload,
                })
            }
        }
    };
    bench
        .register_handler(&UNARY, &[], echo(id.clone()), None)
        .await?;
    let affinity = (1.0 - 0.25 * i as f32).max(0.1);
    bench
        .register_handler(
            &AFFINITY,
            &[],
            echo(id.clone()),
            Some(Arc::new(move |_: &Req| affinity)),
        )
        .await?;
    bench
        .register_handler(&MULTI, &[], echo(id.clone()), None)
        .await?;
    bench
        .register_handler(
            &TOPIC_UNARY,
            std::slice::from_ref(&args.topic),
            echo(id.clone()),
            None,
        )
        .await?;

    bench
        .register_stream_handler(
            &ECHO,
            &[],
            |mut st: ServerStream<Msg, Msg>| async move {
                while let Some(m) = st.recv().await {
                    st.send(m).await?;
                }
                Ok(())
            },
            None,
        )
        .await?;

    let counter = Arc::new(AtomicI64::new(0));
    let (b, e) = (bench.clone(), events.clone());
    bench
        .register_handler(
            &TRIGGER,
            &[],
            move |_ctx: Context, req: Req| {
                let (bench, events, counter, id) =
                    (b.clone(), e.clone(), counter.clone(), id.clone());
                async move {
                    let event = |counter: &AtomicI64| Event {
                        seq: counter.fetch_add(1, Ordering::Relaxed) + 1,
                        text: req.text.clone(),
                        server_id: id.clone(),
                    };
                    for _ in 0..req.count.max(0) {
                        events.publish(&EVENTS, &[], &event(&counter)).await?;
                    }
                    if !req.text.is_empty() {
                        let topic = [req.text.clone()];
                        for _ in 0..req.count.max(0) {
                            bench.publish(&BROADCAST, &topic, &event(&counter)).await?;
                        }
                    }
                    Ok(Res {
                        seq: req.seq,
                        server_id: id,
                        payload: Bytes::new(),
                    })
                }
            },
            None,
        )
        .await?;
    Ok(BenchServer { bench, events })
}

// ---------------------------------------------------------------------------
// The client side

/// One kind of client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Unary,
    TopicUnary,
    Affinity,
    AffinityDefault,
    Multi,
    /// Open an `Echo` stream and close it.
    StreamOpenClose,
}

/// What every client worker shares.
struct Bench {
    client: RpcClient,
    topic: Vec<String>,
    payload: Bytes,
    expect: usize,
}

impl Bench {
    /// One operation of kind `op`; its latency, or what went wrong.
    async fn op(&self, op: Op, seq: i64) -> Result<Duration, String> {
        let req = Req {
            seq,
            text: String::new(),
            payload: self.payload.clone(),
            count: 0,
        };
        let c = &self.client;
        let t0 = Instant::now();
        let res: psrpc::Result<Res> = match op {
            Op::StreamOpenClose => {
                let st = c
                    .stream::<Msg, Msg>(&ECHO, vec![])
                    .timeout(CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                st.close(None).await.map_err(|e| e.to_string())?;
                return Ok(t0.elapsed());
            }
            Op::Unary => c.unary(&UNARY, vec![], req).timeout(CALL_TIMEOUT).await,
            Op::TopicUnary => {
                c.unary(&TOPIC_UNARY, self.topic.clone(), req)
                    .timeout(CALL_TIMEOUT)
                    .await
            }
            Op::Affinity => {
                c.unary(&AFFINITY, vec![], req)
                    .selection(SelectionOptions {
                        maximum_affinity: 1.0,
                        ..Default::default()
                    })
                    .timeout(CALL_TIMEOUT)
                    .await
            }
            Op::AffinityDefault => c.unary(&AFFINITY, vec![], req).timeout(CALL_TIMEOUT).await,
            Op::Multi => {
                let mut s = c
                    .multi::<Req, Res>(&MULTI, vec![], req)
                    .timeout(CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut got = 0;
                while got < self.expect {
                    match s.next().await {
                        Some(Ok(r)) if r.seq == seq => got += 1,
                        Some(Ok(r)) => return Err(format!("multi: seq {} for {seq}", r.seq)),
                        Some(Err(e)) => return Err(e.to_string()),
                        None => {
                            return Err(format!(
                                "multi: {got} of {} responses before the timeout",
                                self.expect
                            ));
                        }
                    }
                }
                let d = t0.elapsed();
                drop(s);
                return Ok(d);
            }
        };
        let d = t0.elapsed();
        match res {
            Ok(r) if r.seq == seq => Ok(d),
            Ok(r) => Err(format!("response seq {} for {seq}", r.seq)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Runs `conc` workers, each doing `op` one at a time until `duration` ends.
async fn run_op(bench: &Arc<Bench>, op: Op, conc: usize, duration: Duration) -> Stats {
    run_workers(
        bench,
        conc,
        duration,
        "row",
        move |bench, w, end| async move {
            let mut stats = Stats::default();
            let mut seq = (w as i64) << 32;
            while Instant::now() < end {
                seq += 1;
                stats.record(bench.op(op, seq).await);
            }
            stats
        },
    )
    .await
}

/// Runs `worker(bench, w, end)` for `w` in `0..conc` as tasks and joins their stats.
async fn run_workers<F, Fut>(
    bench: &Arc<Bench>,
    conc: usize,
    duration: Duration,
    what: &str,
    worker: F,
) -> Stats
where
    F: Fn(Arc<Bench>, usize, Instant) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let start = Instant::now();
    let end = start + duration;
    let tasks = (0..conc)
        .map(|w| tokio::spawn(worker(bench.clone(), w, end)))
        .collect();
    join_workers(tasks, start, what).await
}

/// How long a worker waits before reopening a lost stream or subscription
/// whose reopening failed, so that an outage shows as a dip, not a spin.
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Sleeps [`REOPEN_BACKOFF`], at most until `end`.
async fn backoff(end: Instant) {
    tokio::time::sleep_until(end.min(Instant::now() + REOPEN_BACKOFF).into()).await;
}

/// `stream msg round-trip`: `conc` workers, each on its own `Echo` stream,
/// send one `Msg` and wait for its echo, one at a time. A worker whose
/// stream ends (a fault, a server restart) counts an error and opens a
/// new one, so a fault shows as a dip, not as the end of the row.
async fn run_stream_rt(bench: &Arc<Bench>, conc: usize, duration: Duration) -> Stats {
    run_workers(
        bench,
        conc,
        duration,
        "stream row",
        |bench, w, end| async move {
            let mut stats = Stats::default();
            let mut stream: Option<psrpc::ClientStream<Msg, Msg>> = None;
            let mut seq = (w as i64) << 32;
            while Instant::now() < end {
                let st = match &mut stream {
                    Some(st) => st,
                    None => match bench
                        .client
                        .stream::<Msg, Msg>(&ECHO, vec![])
                        .timeout(CALL_TIMEOUT)
                        .await
                    {
                        Ok(st) => stream.insert(st),
                        Err(e) => {
                            stats.record(Err(format!("open: {e}")));
                            backoff(end).await;
                            continue;
                        }
                    },
                };
                seq += 1;
                let t0 = Instant::now();
                let r = async {
                    st.send(Msg {
                        seq,
                        payload: bench.payload.clone(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    match tokio::time::timeout(CALL_TIMEOUT, st.recv()).await {
                        Ok(Some(m)) if m.seq == seq => Ok(t0.elapsed()),
                        Ok(Some(m)) => Err(format!("echo seq {} for {seq}", m.seq)),
                        Ok(None) => Err(format!("stream closed: {:?}", st.err())),
                        Err(_) => Err("no echo in time".to_owned()),
                    }
                }
                .await;
                let ok = r.is_ok();
                stats.record(r);
                if st.is_closed() {
                    if ok {
                        // Lost after this round trip: count the loss itself.
                        stats.record(Err(format!("stream lost: {:?}", st.err())));
                    }
                    stream = None;
                }
            }
            if let Some(st) = stream {
                let _ = st.close(None).await;
            }
            stats
        },
    )
    .await
}

/// A subscription that reopens itself when it is lost.
struct Resub<T: prost::Message + prost::Name + Default> {
    client: RpcClient,
    method: &'static MethodInfo,
    topic: Vec<String>,
    sub: Option<psrpc::Subscription<T>>,
}

impl<T: prost::Message + prost::Name + Default> Resub<T> {
    /// Subscribes `method` on `topic`.
    async fn open(
        client: &RpcClient,
        method: &'static MethodInfo,
        topic: &[String],
    ) -> Result<Self, String> {
        let sub = client
            .subscribe::<T>(method, topic)
            .await
            .map_err(|e| format!("subscribe {}: {e}", method.name))?;
        Ok(Resub {
            client: client.clone(),
            method,
            topic: topic.to_vec(),
            sub: Some(sub),
        })
    }

    /// The subscription, subscribing again first if it was lost.
    async fn get(&mut self) -> Result<&mut psrpc::Subscription<T>, String> {
        if self.sub.is_none() {
            let sub = self
                .client
                .subscribe::<T>(self.method, &self.topic)
                .await
                .map_err(|e| format!("resubscribe {}: {e}", self.method.name))?;
            self.sub = Some(sub);
        }
        Ok(self.sub.as_mut().expect("just set"))
    }
}

/// Readies `sub` for the next operation: drops stale updates, and
/// subscribes again if the subscription was lost, which is an error to
/// count (the operation is skipped: its updates could be missed).
async fn ready<T: prost::Message + prost::Name + Default>(
    sub: &mut Resub<T>,
    what: &str,
) -> Result<(), String> {
    let mut lost = sub.sub.is_none();
    if let Some(s) = &mut sub.sub {
        loop {
            match s.recv().now_or_never() {
                Some(Some(_)) => {}
                Some(None) => {
                    sub.sub = None;
                    lost = true;
                    break;
                }
                None => break,
            }
        }
    }
    if !lost {
        return Ok(());
    }
    if let Err(e) = sub.get().await {
        tokio::time::sleep(REOPEN_BACKOFF).await;
        return Err(e);
    }
    Err(format!("{what} subscription lost (reopened)"))
}

/// Waits up to [`CALL_TIMEOUT`] for the next update of `sub`; a lost
/// subscription is an error, and is reopened by the next call.
async fn next_update<T: prost::Message + prost::Name + Default>(
    sub: &mut Resub<T>,
    what: &str,
) -> Result<T, String> {
    let s = match sub.get().await {
        Ok(s) => s,
        Err(e) => {
            tokio::time::sleep(REOPEN_BACKOFF).await;
            return Err(e);
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, s.recv()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => {
            sub.sub = None;
            Err(format!("{what} subscription lost (reopening)"))
        }
        Err(_) => Err(format!("no {what} within {CALL_TIMEOUT:?}")),
    }
}

/// `sub trigger->event+bcast seq`: one Trigger with count 1 and text
/// `--topic`, complete when its response, the event and the broadcast arrived.
async fn run_sub_trigger(
    client: &RpcClient,
    events: &mut Resub<Event>,
    bcast: &mut Resub<Event>,
    topic: &str,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let end = start + duration;
    let mut seq = 0;
    while Instant::now() < end {
        seq += 1;
        let lost = match ready(events, "event").await {
            Ok(()) => ready(bcast, "broadcast").await,
            Err(e) => Err(e),
        };
        if let Err(e) = lost {
            stats.record(Err(e));
            continue;
        }
        let t0 = Instant::now();
        let r: Result<Duration, String> = async {
            let req = Req {
                seq,
                text: topic.to_owned(),
                payload: Bytes::new(),
                count: 1,
            };
            client
                .unary::<Req, Res>(&TRIGGER, vec![], req)
                .timeout(CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            next_update(events, "event").await?;
            let b = next_update(bcast, "broadcast").await?;
            if b.text != topic {
                return Err(format!("broadcast text {:?}", b.text));
            }
            Ok(t0.elapsed())
        }
        .await;
        stats.record(r);
    }
    stats.elapsed = start.elapsed();
    stats
}

/// `sub burst`: Triggers with count `--burst` (no broadcast) until the
/// duration ends (at least one); every delivered event is one operation,
/// its latency measured from the moment the Trigger was sent.
async fn run_sub_burst(
    client: &RpcClient,
    events: &mut Resub<Event>,
    burst: usize,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let end = start + duration;
    let mut seq = 0;
    loop {
        seq += 1;
        if let Err(e) = ready(events, "event").await {
            stats.record(Err(e));
            if Instant::now() >= end {
                break;
            }
            continue;
        }
        let t0 = Instant::now();
        let req = Req {
            seq,
            text: String::new(),
            payload: Bytes::new(),
            count: burst as i32,
        };
        let call = client
            .unary::<Req, Res>(&TRIGGER, vec![], req)
            .timeout(CALL_TIMEOUT + duration);
        let read = async {
            let mut s = Stats::default();
            for _ in 0..burst {
                match next_update(events, "event").await {
                    Ok(_) => s.record(Ok(t0.elapsed())),
                    Err(e) => {
                        s.record(Err(e));
                        break;
                    }
                }
            }
            s
        };
        let (res, s) = tokio::join!(call, read);
        stats.merge(s);
        if let Err(e) = res {
            stats.record(Err(format!("trigger: {e}")));
        }
        if Instant::now() >= end {
            break;
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

// ---------------------------------------------------------------------------
// Output

/// One line of the result table.
struct Row {
    name: &'static str,
    /// The row, its floor and the floor shape.
    result: (Stats, Stats, FloorKind),
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The ratio of a row to its floor (BENCH.md): row ops/s over floor ops/s;
/// 1.0 = as fast as the bare bus, 0.8 = 80% of it.
fn ratio(row: &Stats, floor: &Stats) -> f64 {
    let f = floor.ops_per_s();
    if f > 0.0 { row.ops_per_s() / f } else { 0.0 }
}

/// Text-like request payload of `n` bytes: JSON-like records of a small
/// vocabulary and small numbers, about as compressible as service logs or
/// API payloads (gzip level 6 shrinks it about 7 times).
fn text_payload(n: usize) -> Bytes {
    const WORDS: [&str; 32] = [
        "room",
        "participant",
        "track",
        "audio",
        "video",
        "publish",
        "subscribe",
        "region",
        "us-east",
        "eu-west",
        "state",
        "active",
        "muted",
        "joined",
        "left",
        "node",
        "egress",
        "ingress",
        "codec",
        "opus",
        "vp8",
        "h264",
        "bitrate",
        "layer",
        "simulcast",
        "quality",
        "high",
        "low",
        "medium",
        "error",
        "ok",
        "timeout",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = String::with_capacity(n + 160);
    while s.len() < n {
        let r = next();
        let _ = writeln!(
            s,
            "{{\"room\":\"{}-{}\",\"participant\":\"PA_{}{}\",\"track\":\"{}\",\"state\":\"{}\",\"bitrate\":{}}}",
            WORDS[(r & 7) as usize],
            (r >> 3) % 100,
            WORDS[((r >> 10) & 31) as usize],
            (r >> 15) % 1000,
            WORDS[((r >> 25) & 15) as usize],
            WORDS[((r >> 29) & 7) as usize],
            ((r >> 32) % 50) * 100
        );
    }
    s.truncate(n);
    Bytes::from(s)
}

/// The size of a unary request of this run on the bus: uncompressed, and
/// as the connections send it.
fn request_bytes(args: &Args) -> (usize, usize) {
    use prost::Message as _;
    let req = psrpc::wire::Request {
        request_id: psrpc::id::new_request_id(),
        client_id: args.client_id.clone(),
        sent_at: psrpc::wire::now_ns(),
        expiry: psrpc::wire::now_ns() + 3_000_000_000,
        raw_request: Req {
            seq: 1,
            payload: text_payload(args.payload),
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
        ..Default::default()
    };
    let c = CompressionOptions::default().with_quality(args.compress);
    (psrpc::wire::encode_msg(&req).len(), c.encode(&req).len())
}

fn print_table(bus: &str, floor: &str, args: &Args, rows: &[Row]) {
    println!();
    let servers = if args.mode == Mode::Client {
        "servers elsewhere".to_owned()
    } else {
        format!("{} servers", args.servers)
    };
    println!(
        "bus {bus}: {servers}, expect {}, conc {}, payload {} B, {:?} per row, {} (floor: {floor}, same hops and concurrency, up to {:?})",
        args.expect,
        args.conc,
        args.payload,
        args.duration,
        match (args.middleware, args.skip_claim) {
            (true, false) => "middleware: tracing, metrics, recovery",
            (true, true) => "middleware: tracing, metrics, recovery; claim skip",
            (false, true) => "no middleware; claim skip",
            (false, false) => "no middleware",
        },
        MAX_FLOOR_DURATION
    );
    let (plain, sent) = request_bytes(args);
    println!(
        "bytes on the bus per unary request: {plain} uncompressed, {sent} as sent (--compress {}, {:.1}x smaller)",
        args.compress,
        plain as f64 / sent as f64
    );
    let header = [
        "row",
        "n",
        "ops/s",
        "p50 us",
        "p99 us",
        "errors",
        "hops",
        "floor ops/s",
        "floor p50",
        "ratio",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let (s, f, k) = &r.result;
        {
            lines.push(vec![
                r.name.to_owned(),
                s.n.to_string(),
                fmt_num(s.ops_per_s()),
                fmt_num(s.pct(50.0)),
                fmt_num(s.pct(99.0)),
                s.errors.to_string(),
                k.hops(),
                fmt_num(f.ops_per_s()),
                fmt_num(f.pct(50.0)),
                format!("{:.3}", ratio(s, f)),
            ]);
        }
    }
    let ncol = header.len();
    let mut w = vec![0; ncol];
    for l in &lines {
        for (i, c) in l
            .iter()
            .enumerate()
            .take(if l.len() == ncol { ncol } else { 1 })
        {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for (li, l) in lines.iter().enumerate() {
        let mut out = String::new();
        if l.len() == ncol {
            for (i, c) in l.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "{c:<w$}", w = w[0]);
                } else {
                    let _ = write!(out, "  {c:>w$}", w = w[i]);
                }
            }
        } else {
            let _ = write!(out, "{:<w$}  {}", l[0], l[1], w = w[0]);
        }
        println!("{}", out.trim_end());
        if li == 0 {
            println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * (ncol - 1)));
        }
    }
    println!(
        "hops: unary/topic/affinity 4 (request, claim, claim response, response) = 2 round trips; \
         multi 1+N (request fanned out to N=--expect servers, N responses); \
         stream open+close 4 (open, claim, claim response, ack; the close is one-way) = 2 round trips; \
         stream msg round-trip 2 (message, echo; their acks travel beside them) = 1 round trip; \
         sub trigger 6 (4 of the call + event + broadcast) = 3 round trips; \
         sub burst: one-way stream of --burst messages, 1 hop per event, latency from burst start."
    );
    println!("ratio = row ops/s / floor ops/s (1.0 = as fast as the bare bus with the same hops).");
    for r in rows {
        let (s, f, _) = &r.result;
        if let Some(e) = &s.first_error {
            println!("first error of {:?}: {e}", r.name);
        }
        if let Some(e) = &f.first_error {
            println!("first error of the floor of {:?}: {e}", r.name);
        }
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// The JSON of BENCH.md.
fn to_json(bus: &str, rows: &[Row]) -> String {
    let mut o = format!("{{\"bus\": \"{}\", \"rows\": [", json_escape(bus));
    let mut first = true;
    for r in rows {
        let (s, f, _) = &r.result;
        if !first {
            o.push_str(", ");
        }
        first = false;
        let _ = write!(
            o,
            "{{\"name\": \"{}\", \"n\": {}, \"ops_per_s\": {:.3}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"errors\": {}, \"floor_ops_per_s\": {:.3}, \"floor_p50_us\": {:.3}, \"ratio\": {:.4}}}",
            json_escape(r.name),
            s.n,
            s.ops_per_s(),
            s.pct(50.0),
            s.pct(99.0),
            s.errors,
            f.ops_per_s(),
            f.pct(50.0),
            ratio(s, f),
        );
    }
    o.push_str("]}\n");
    o
}

// ---------------------------------------------------------------------------

/// The bus named by `--bus`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BusSpec {
    Local,
    Redis(String),
    Nats(String),
}

impl BusSpec {
    fn parse(s: &str) -> Result<BusSpec, String> {
        let kind = s.split("://").next().unwrap_or_default();
        match kind {
            "local" if s == "local" => Ok(BusSpec::Local),
            "redis" | "rediss" if s.contains("://") => Ok(BusSpec::Redis(s.to_owned())),
            "nats" | "tls" if s.contains("://") => Ok(BusSpec::Nats(s.to_owned())),
            _ => Err(format!(
                "unknown bus {s:?} (local, redis://HOST:PORT, nats://HOST:PORT)"
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            BusSpec::Local => "local",
            BusSpec::Redis(_) => "redis",
            BusSpec::Nats(_) => "nats",
        }
    }
}

/// One connection to the bus (for `local`, a handle on the one in-process bus).
#[derive(Clone)]
enum Conn {
    Local(LocalBus),
    Redis(RedisBus),
    Nats(NatsBus),
}

impl Conn {
    fn bus(&self) -> DynBus {
        match self {
            Conn::Local(b) => Arc::new(b.clone()),
            Conn::Redis(b) => Arc::new(b.clone()),
            Conn::Nats(b) => Arc::new(b.clone()),
        }
    }

    fn dropped(&self) -> u64 {
        match self {
            Conn::Local(b) => b.dropped(),
            Conn::Redis(b) => b.dropped(),
            Conn::Nats(b) => b.dropped(),
        }
    }
}

/// Opens bus connections and remembers them for the drop count at the end.
struct Connector {
    spec: BusSpec,
    local: LocalBus,
    conns: Vec<Conn>,
    compression: CompressionOptions,
}

impl Connector {
    /// Connections that gzip their publishes at level `compress` (0: off).
    fn new(spec: BusSpec, compress: u32) -> Self {
        Connector {
            spec,
            local: LocalBus::new(),
            conns: Vec::new(),
            compression: CompressionOptions::default().with_quality(compress),
        }
    }

    /// A new connection of its own (on `local`, a handle on the shared bus).
    async fn connect(&mut self, who: &str) -> Result<DynBus, String> {
        let c = self.compression;
        let conn = match &self.spec {
            BusSpec::Local => Conn::Local(self.local.clone().with_compression(c)),
            BusSpec::Redis(url) => Conn::Redis(
                RedisBus::connect(url)
                    .await
                    .map_err(|e| format!("{who}: connecting to redis: {e}"))?
                    .with_compression(c),
            ),
            BusSpec::Nats(url) => Conn::Nats(
                NatsBus::builder()
                    .compression(c)
                    .connect(url)
                    .await
                    .map_err(|e| format!("{who}: connecting to nats: {e}"))?,
            ),
        };
        let bus = conn.bus();
        self.conns.push(conn);
        Ok(bus)
    }

    /// Deliveries dropped for slow consumers, over every connection.
    fn dropped(&self) -> u64 {
        match self.spec {
            // Every handle counts the one shared bus.
            BusSpec::Local => self.local.dropped(),
            _ => self.conns.iter().map(Conn::dropped).sum(),
        }
    }

    /// What the floor of this bus is.
    fn floor_desc(&self) -> String {
        match self.spec {
            BusSpec::Local => "tokio channel".into(),
            _ => format!(
                "bare {} publish/subscribe ping-pong between separate connections",
                self.spec.kind()
            ),
        }
    }
}

/// Measures floors once per (kind, concurrency) and reuses them.
struct Floors {
    cache: HashMap<(FloorKind, usize), Arc<Stats>>,
    duration: Duration,
    payload: Bytes,
    /// For a network bus: the floor's client connection and its echo peers'
    /// connections (opened on first use); `None` on the local bus.
    bus: Option<(DynBus, Vec<DynBus>)>,
}

impl Floors {
    async fn get(
        &mut self,
        kind: FloorKind,
        conc: usize,
        connector: &mut Connector,
    ) -> Result<Arc<Stats>, String> {
        if let Some(s) = self.cache.get(&(kind, conc)) {
            return Ok(s.clone());
        }
        let stats = if connector.spec == BusSpec::Local {
            measure_floor(kind, conc, self.duration, self.payload.clone()).await
        } else {
            let peers_needed = match kind {
                FloorKind::PingPong { fanout, .. } => fanout.max(1),
                FloorKind::Stream { .. } => 1,
            };
            if self.bus.is_none() {
                self.bus = Some((connector.connect("floor client").await?, Vec::new()));
            }
            let Some((client, peers)) = &mut self.bus else {
                unreachable!("set above")
            };
            while peers.len() < peers_needed {
                peers.push(connector.connect("floor peer").await?);
            }
            measure_bus_floor(
                kind,
                conc,
                self.duration,
                self.payload.clone(),
                client,
                peers,
            )
            .await
        };
        let s = Arc::new(stats);
        self.cache.insert((kind, conc), s.clone());
        Ok(s)
    }
}

/// Starts servers `0..args.servers`, each on its own bus connection, as
/// separate processes would.
async fn start_servers(connector: &mut Connector, args: &Args) -> Result<Vec<BenchServer>, String> {
    let mut servers = Vec::new();
    for i in 0..args.servers {
        let bus = connector.connect(&format!("server {i}")).await?;
        let s = start_server(bus, i, args)
            .await
            .map_err(|e| format!("starting server {i}: {e}"))?;
        servers.push(s);
    }
    Ok(servers)
}

/// Shuts every server down gracefully (in-flight handlers finish).
async fn shutdown_servers(servers: &[BenchServer]) {
    futures::future::join_all(servers.iter().map(|s| async move {
        s.bench.shutdown().await;
        s.events.shutdown().await;
    }))
    .await;
}

/// Runs every client row on one client connection and returns the rows.
async fn client_rows(args: &Args, connector: &mut Connector) -> Result<Vec<Row>, String> {
    let payload = text_payload(args.payload);
    // The client gets its own connection, shared by its two service clients
    // as in one client process.
    let bus = connector.connect("client").await?;
    let client = RpcClient::new(bus.clone(), "Bench", client_options(args))
        .await
        .map_err(|e| format!("client: {e}"))?;
    let events_client = RpcClient::new(bus, "BenchEvents", client_options(args))
        .await
        .map_err(|e| format!("events client: {e}"))?;
    let bench = Arc::new(Bench {
        client: client.clone(),
        topic: vec![args.topic.clone()],
        payload: payload.clone(),
        expect: args.expect,
    });
    let mut floors = Floors {
        cache: HashMap::new(),
        duration: args.duration.min(MAX_FLOOR_DURATION),
        payload,
        bus: None,
    };

    let d = args.duration;
    let conc = args.conc;
    let test = |t: &str| args.tests.iter().any(|x| x == t);
    let pp = |fanout: usize, rounds: usize| FloorKind::PingPong { fanout, rounds };
    let unary_floor = pp(1, 2);
    let mut rows: Vec<Row> = Vec::new();

    let mut plan: Vec<(&'static str, Op, usize, FloorKind)> = Vec::new();
    if test("unary") {
        plan.push(("unary (queue) seq", Op::Unary, 1, unary_floor));
        plan.push(("unary (queue) conc64", Op::Unary, conc, unary_floor));
        plan.push(("topic unary seq", Op::TopicUnary, 1, unary_floor));
    }
    if test("affinity") {
        plan.push(("affinity seq", Op::Affinity, 1, unary_floor));
        plan.push(("affinity conc64", Op::Affinity, conc, unary_floor));
        plan.push((
            "affinity seq (default opts)",
            Op::AffinityDefault,
            1,
            unary_floor,
        ));
    }
    if test("multi") {
        let mf = pp(args.expect.max(1), 1);
        plan.push(("multi seq", Op::Multi, 1, mf));
        plan.push(("multi conc64", Op::Multi, conc, mf));
    }
    for (name, op, c, kind) in plan {
        eprintln!("running {name} ...");
        let s = run_op(&bench, op, c, d).await;
        let f = floors.get(kind, c, connector).await?;
        eprintln!(
            "  done: {} ops, {} errors (floor {} ops, {} errors), rss {}",
            s.n,
            s.errors,
            f.n,
            f.errors,
            rss()
        );
        rows.push(Row {
            name,
            result: (s, (*f).clone(), kind),
        });
    }
    if test("stream") {
        // Open: open, claim, claim response, ack (the close is not awaited
        // by anyone): two ping-pongs. A message round trip: the message and
        // its echo (their acks travel beside them): one ping-pong.
        let open_floor = pp(1, 2);
        eprintln!("running stream open+close seq ...");
        let s = run_op(&bench, Op::StreamOpenClose, 1, d).await;
        let f = floors.get(open_floor, 1, connector).await?;
        rows.push(Row {
            name: "stream open+close seq",
            result: (s, (*f).clone(), open_floor),
        });
        let rt_floor = pp(1, 1);
        for (name, c) in [
            ("stream msg round-trip seq", 1),
            ("stream msg round-trip 64 streams", conc),
        ] {
            eprintln!("running {name} ...");
            let s = run_stream_rt(&bench, c, d).await;
            let f = floors.get(rt_floor, c, connector).await?;
            eprintln!(
                "  done: {} ops, {} errors (floor {} ops, {} errors), rss {}",
                s.n,
                s.errors,
                f.n,
                f.errors,
                rss()
            );
            rows.push(Row {
                name,
                result: (s, (*f).clone(), rt_floor),
            });
        }
    }
    if test("sub") {
        let mut events = Resub::open(&events_client, &EVENTS, &[]).await?;
        let mut bcast = Resub::open(&client, &BROADCAST, std::slice::from_ref(&args.topic)).await?;
        eprintln!("running sub trigger->event+bcast seq ...");
        let s = run_sub_trigger(&client, &mut events, &mut bcast, &args.topic, d).await;
        let kind = pp(1, 3);
        let f = floors.get(kind, 1, connector).await?;
        eprintln!(
            "  done: {} ops, {} errors (floor {} ops, {} errors)",
            s.n, s.errors, f.n, f.errors
        );
        rows.push(Row {
            name: "sub trigger->event+bcast seq",
            result: (s, (*f).clone(), kind),
        });
        eprintln!("running sub burst ...");
        let s = run_sub_burst(&client, &mut events, args.burst, d).await;
        let kind = FloorKind::Stream { n: args.burst };
        let f = floors.get(kind, 1, connector).await?;
        eprintln!(
            "  done: {} ops, {} errors (floor {} ops, {} errors)",
            s.n, s.errors, f.n, f.errors
        );
        rows.push(Row {
            name: "sub burst",
            result: (s, (*f).clone(), kind),
        });
    }

    client.close();
    events_client.close();
    Ok(rows)
}

/// Prints the table (and writes the JSON) of a client run.
fn report(args: &Args, connector: &Connector, rows: &[Row]) -> Result<(), String> {
    print_table(&args.bus, &connector.floor_desc(), args, rows);
    println!("rss at end: {}", rss());
    let dropped = connector.dropped();
    if dropped > 0 {
        println!(
            "{} bus dropped {dropped} deliveries (slow consumers)",
            connector.spec.kind()
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&args.bus, rows))
            .map_err(|e| format!("writing {path}: {e}"))?;
        println!("json written to {path} (skipped rows left out)");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; the name of the signal.
async fn wait_for_signal() -> Result<&'static str, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("Ctrl-C handler: {e}"))?;
        Ok("Ctrl-C")
    }
}

async fn run(args: Args, spec: BusSpec) -> Result<(), String> {
    let mut connector = Connector::new(spec, args.compress);
    match args.mode {
        Mode::All => {
            let servers = start_servers(&mut connector, &args).await?;
            let rows = client_rows(&args, &mut connector).await;
            shutdown_servers(&servers).await;
            report(&args, &connector, &rows?)
        }
        Mode::Client => {
            let rows = client_rows(&args, &mut connector).await?;
            report(&args, &connector, &rows)
        }
        Mode::Server => {
            let servers = start_servers(&mut connector, &args).await?;
            println!(
                "serving: {} servers ({}0..{}{}) on {}, topic {:?}; SIGTERM or SIGINT to stop",
                args.servers,
                args.server_id,
                args.server_id,
                args.servers - 1,
                args.bus,
                args.topic
            );
            // Should the handlers fail to register, shut down at once
            // (and say why) rather than serve with no way to stop cleanly.
            let sig = wait_for_signal().await;
            match &sig {
                Ok(s) => eprintln!("{s}: shutting down gracefully ..."),
                Err(e) => eprintln!("psrpc-bench: {e}; shutting down"),
            }
            shutdown_servers(&servers).await;
            let dropped = connector.dropped();
            println!(
                "servers stopped; {} bus dropped {dropped} deliveries (slow consumers); rss {}",
                connector.spec.kind(),
                rss()
            );
            sig.map(|_| ())
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("psrpc-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let spec = match BusSpec::parse(&args.bus) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("psrpc-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if spec == BusSpec::Local && args.mode != Mode::All {
        eprintln!(
            "psrpc-bench: --mode {} makes no sense with --bus local (the local bus lives in one process); use --mode all",
            if args.mode == Mode::Server {
                "server"
            } else {
                "client"
            }
        );
        return ExitCode::from(2);
    }
    if args.mode == Mode::All && args.expect > args.servers {
        eprintln!(
            "psrpc-bench: --expect {} exceeds --servers {} in all mode",
            args.expect, args.servers
        );
        return ExitCode::from(2);
    }
    if args.mode != Mode::Client && args.servers == 0 {
        eprintln!("psrpc-bench: --servers must be at least 1 in all and server modes");
        return ExitCode::from(2);
    }
    if args.mode == Mode::Client && args.expect == 0 && args.tests.iter().any(|t| t == "multi") {
        eprintln!("psrpc-bench: --expect must be at least 1 for the multi rows");
        return ExitCode::from(2);
    }

    println!("rss at start: {}", rss());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("psrpc-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(args, spec));
    drop(rt);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("psrpc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for every worker of a measurement and merges their figures; a
/// worker that panicked counts as an error.
async fn join_workers(
    tasks: Vec<tokio::task::JoinHandle<Stats>>,
    start: Instant,
    what: &str,
) -> Stats {
    let mut stats = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(s),
            Err(e) => stats.record(Err(format!("{what} worker panicked: {e}"))),
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream row whose streams are lost (the server ends each one after
    /// three echoes) keeps running: each worker reopens its stream and the
    /// losses count as errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_row_reopens_lost_streams() {
        let bus: DynBus = Arc::new(LocalBus::new());
        let server = RpcServer::new(bus.clone(), "Bench", ServerOptions::default());
        server
            .register_stream_handler(
                &ECHO,
                &[],
                |mut st: ServerStream<Msg, Msg>| async move {
                    for _ in 0..3 {
                        match st.recv().await {
                            Some(m) => st.send(m).await?,
                            None => return Ok(()),
                        }
                    }
                    Err(psrpc::Error::new(psrpc::ErrorCode::Unavailable, "lost"))
                },
                None,
            )
            .await
            .unwrap();
        let client = RpcClient::new(bus, "Bench", ClientOptions::default())
            .await
            .unwrap();
        let bench = Arc::new(Bench {
            client,
            topic: Vec::new(),
            payload: Bytes::new(),
            expect: 1,
        });
        let s = run_stream_rt(&bench, 2, Duration::from_secs(1)).await;
        assert!(s.errors >= 2, "each loss counted: {} errors", s.errors);
        assert!(s.n > 2 * 3, "the workers kept going: {} ops", s.n);
        server.shutdown().await;
    }

    /// A subscription row whose subscriptions are lost keeps running: the
    /// read that finds one closed counts an error and subscribes again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sub_row_reopens_lost_subscriptions() {
        let args = parse_args(Vec::<String>::new()).unwrap();
        let bus: DynBus = Arc::new(LocalBus::new());
        let server = start_server(bus.clone(), 0, &args).await.unwrap();
        let client = RpcClient::new(bus.clone(), "Bench", ClientOptions::default())
            .await
            .unwrap();
        let events_client = RpcClient::new(bus, "BenchEvents", ClientOptions::default())
            .await
            .unwrap();
        let mut events = Resub::open(&events_client, &EVENTS, &[]).await.unwrap();
        let topic = std::slice::from_ref(&args.topic);
        let mut bcast = Resub::open(&client, &BROADCAST, topic).await.unwrap();
        // Lost before the row starts.
        events.sub.as_mut().unwrap().close();
        bcast.sub.as_mut().unwrap().close();
        let d = Duration::from_millis(500);
        let s = run_sub_trigger(&client, &mut events, &mut bcast, &args.topic, d).await;
        assert!(s.errors >= 1, "the loss counted: {} errors", s.errors);
        assert!(s.n > 0, "the row kept going: {} ops", s.n);
        events.sub.as_mut().unwrap().close();
        let s = run_sub_burst(&client, &mut events, 10, d).await;
        assert!(s.errors >= 1, "the loss counted: {} errors", s.errors);
        assert!(s.n > 0, "the row kept going: {} ops", s.n);
        shutdown_servers(&[server]).await;
    }
}
