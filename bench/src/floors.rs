//! The floors: what the bus alone costs for the hops of a row's operation,
//! and the cache that measures each floor once per run. The local bus's
//! ping-pong floors live here; those of the network buses in
//! [`crate::bus_floors`], the minimal RPC floor in [`crate::rpc_floor`],
//! the wire floor in [`crate::wire_floor`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psrpc::bus::DynBus;
use psrpc::{CompressionOptions, LocalBus};
use tokio::sync::mpsc;

use crate::args::BusSpec;
use crate::bus_floors::measure_bus_floor;
use crate::conn::Connector;
use crate::rpc_floor::measure_rpc_floor;
use crate::stats::{Stats, join_workers};
use crate::wire_floor::{WireShape, measure_wire_floor};

/// Longest floor measurement per row (floors are cheap and stable).
pub(crate) const MAX_FLOOR_DURATION: Duration = Duration::from_secs(1);

/// The shape of a floor operation: `rounds` times, send the payload to
/// `fanout` echo peers and wait for all their replies. Each round is
/// `2 * fanout` channel hops (`fanout` deliveries out, `fanout` back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FloorKind {
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
    /// A minimal RPC over the bus: request envelope out to one of
    /// `servers` queue members, response envelope back, routed to the
    /// caller by request id ([`crate::rpc_floor`]).
    Rpc {
        /// Servers in the queue.
        servers: usize,
    },
    /// The bare bus doing the publishes, deliveries and queue work of
    /// psrpc's wire for one operation of `shape` with `servers` peers
    /// ([`crate::wire_floor`]).
    Wire {
        /// The operation.
        shape: WireShape,
        /// Peers, each on its own connection.
        servers: usize,
    },
}

impl FloorKind {
    /// The bus hops of one operation, for the table.
    pub(crate) fn hops(&self) -> String {
        match *self {
            FloorKind::PingPong { fanout, rounds } => {
                if fanout == 1 {
                    format!("{}", 2 * rounds)
                } else {
                    format!("{}x(1+{fanout})", rounds)
                }
            }
            FloorKind::Stream { .. } => "1/ev".into(),
            FloorKind::Rpc { .. } => "2".into(),
            // Sequential hops: request, claim, grant, response; message,
            // ack and echo, ack.
            FloorKind::Wire { shape, .. } => match shape {
                WireShape::Unary | WireShape::Affinity => "4".into(),
                WireShape::Stream => "3".into(),
            },
        }
    }
}

/// Runs `conc` workers of the floor `kind` for `duration`.
pub(crate) async fn measure_floor(
    kind: FloorKind,
    conc: usize,
    duration: Duration,
    payload: Bytes,
) -> Stats {
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
                FloorKind::Rpc { .. } | FloorKind::Wire { .. } => {
                    unreachable!("the RPC and wire floors run on a bus")
                }
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

/// Measures floors once per (kind, concurrency) and reuses them.
pub(crate) struct Floors {
    cache: HashMap<(FloorKind, usize), Arc<Stats>>,
    duration: Duration,
    payload: Bytes,
    /// For a network bus: the floor's client connection and its echo peers'
    /// connections (opened on first use); `None` on the local bus.
    bus: Option<(DynBus, Vec<DynBus>)>,
    /// What the RPC floor puts in its request envelopes.
    client_id: String,
    /// How the RPC floor encodes its envelopes (the run's `--compress`).
    compression: CompressionOptions,
}

impl Floors {
    /// Floors of up to `duration` (at most [`MAX_FLOOR_DURATION`]) with
    /// `payload`; the RPC floor's requests carry `client_id` and are
    /// compressed at level `compress`.
    pub(crate) fn new(duration: Duration, payload: Bytes, client_id: &str, compress: u32) -> Self {
        Floors {
            cache: HashMap::new(),
            duration: duration.min(MAX_FLOOR_DURATION),
            payload,
            bus: None,
            client_id: client_id.to_owned(),
            compression: CompressionOptions::default().with_quality(compress),
        }
    }

    /// The floor `kind` at concurrency `conc`, measured on first use.
    pub(crate) async fn get(
        &mut self,
        kind: FloorKind,
        conc: usize,
        connector: &mut Connector,
    ) -> Result<Arc<Stats>, String> {
        if let Some(s) = self.cache.get(&(kind, conc)) {
            return Ok(s.clone());
        }
        let peers_needed = match kind {
            FloorKind::PingPong { fanout, .. } => fanout.max(1),
            FloorKind::Stream { .. } => 1,
            FloorKind::Rpc { servers } | FloorKind::Wire { servers, .. } => servers.max(1),
        };
        let stats = match (kind, &connector.spec) {
            (FloorKind::Rpc { .. }, BusSpec::Local) => {
                // A bus of its own: every handle is the same in-process bus.
                let bus: DynBus = Arc::new(LocalBus::new());
                let servers = vec![bus.clone(); peers_needed];
                self.rpc(conc, &bus, &servers).await
            }
            (FloorKind::Wire { shape, .. }, BusSpec::Local) => {
                // Likewise: the same code as on the network buses.
                let bus: DynBus = Arc::new(LocalBus::new());
                let peers = vec![bus.clone(); peers_needed];
                let p = self.payload.clone();
                measure_wire_floor(shape, conc, self.duration, p, &bus, &peers).await
            }
            (_, BusSpec::Local) => {
                measure_floor(kind, conc, self.duration, self.payload.clone()).await
            }
            _ => {
                if self.bus.is_none() {
                    self.bus = Some((connector.connect("floor client").await?, Vec::new()));
                }
                let Some((client, peers)) = &mut self.bus else {
                    unreachable!("set above")
                };
                while peers.len() < peers_needed {
                    peers.push(connector.connect("floor peer").await?);
                }
                let (client, peers) = (client.clone(), peers[..peers_needed].to_vec());
                let p = self.payload.clone();
                match kind {
                    FloorKind::Rpc { .. } => self.rpc(conc, &client, &peers).await,
                    FloorKind::Wire { shape, .. } => {
                        measure_wire_floor(shape, conc, self.duration, p, &client, &peers).await
                    }
                    _ => measure_bus_floor(kind, conc, self.duration, p, &client, &peers).await,
                }
            }
        };
        let s = Arc::new(stats);
        self.cache.insert((kind, conc), s.clone());
        Ok(s)
    }

    /// The RPC floor between `client` and `servers`.
    async fn rpc(&self, conc: usize, client: &DynBus, servers: &[DynBus]) -> Stats {
        let opts = crate::rpc_floor::RpcFloor {
            payload: self.payload.clone(),
            client_id: self.client_id.clone(),
            compression: self.compression,
        };
        measure_rpc_floor(&opts, conc, self.duration, client, servers).await
    }
}
