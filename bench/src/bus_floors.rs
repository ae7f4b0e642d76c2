//! The floors of the network buses: a bare publish/subscribe ping-pong
//! (or burst) through the psrpc [`MessageBus`] API between separate
//! connections of the same broker, with no RPC runtime in between.

use std::time::{Duration, Instant};

use bytes::Bytes;
use psrpc::bus::DynBus;
use psrpc::{Channel, MessageBus};

use crate::CALL_TIMEOUT;
use crate::floors::FloorKind;
use crate::stats::{Stats, join_workers};

/// Aborts a task when dropped (stops a floor echo peer and, with it, its
/// subscription).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A floor channel: the same name as Redis channel and NATS subject, read
/// directly (no NATS demultiplexing, as for psrpc's client channels).
pub(crate) fn floor_channel(name: String) -> Channel {
    Channel {
        legacy: name.clone(),
        server: name,
        local: String::new(),
    }
}

/// One ping-pong floor worker on a bus, set up: the client side publishes on
/// `req` (fanned out by the bus to every echo peer, each on its own
/// connection) and reads the echoes on `replies`.
struct BusPingPong {
    req: Channel,
    replies: psrpc::bus::RawSubscription,
    _echoes: Vec<AbortOnDrop>,
}

/// Runs `conc` workers of the floor `kind` for `duration` over a bus: a bare
/// publish/subscribe ping-pong between the `client` connection and echo
/// peers on their own connections (`peers`, at least the fan-out), through
/// the psrpc [`MessageBus`] API with no RPC runtime in between. Subscriptions
/// are set up before the clock starts.
pub(crate) async fn measure_bus_floor(
    kind: FloorKind,
    conc: usize,
    duration: Duration,
    payload: Bytes,
    client: &DynBus,
    peers: &[DynBus],
) -> Stats {
    let tag = psrpc::protocol::id::new_id("");
    match kind {
        FloorKind::PingPong { fanout, rounds } => {
            let mut workers = Vec::with_capacity(conc);
            for w in 0..conc {
                match bus_pingpong_worker(&tag, w, fanout, client, peers).await {
                    Ok(wk) => workers.push(wk),
                    Err(e) => return Stats::failed(format!("floor setup: {e}")),
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
        FloorKind::Rpc { .. } => unreachable!("measured by crate::rpc_floor"),
        FloorKind::Wire { .. } => unreachable!("measured by crate::wire_floor"),
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
        Err(e) => return Stats::failed(format!("floor subscribe: {e}")),
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
