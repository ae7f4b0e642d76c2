//! The wire floor: the bare bus doing, for one operation of a row, the
//! publishes, deliveries and queue-subscription work that psrpc's wire
//! protocol requires, and nothing else (no envelopes, no runtime).
//!
//! The raw floor ([`crate::bus_floors`]) has the row's sequential hops with
//! one reader per hop. psrpc's wire moves more: the channels that carry a
//! claim response and a client's stream messages are read by every server
//! of the method, an affinity request goes to every server (each bids), and
//! Redis has no queue groups, so every server reads a queue request and
//! races for its `SET NX` lock (inside the Redis bus's `subscribe_queue`).
//! The wire floor does exactly that work with `--servers` peers, each on
//! its own connection, one set of channels per worker:
//!
//! - **unary (queue)**: the client publishes the request on `req`, which
//!   every peer reads through `subscribe_queue` (one of them gets it); that
//!   peer publishes a claim on the client's `rep`; the client publishes a
//!   grant naming it on `grant`, which every peer subscribes; the granted
//!   peer publishes the response on `rep`. 4 publishes; deliveries 1 + 1 +
//!   N + 1 with queue groups (NATS, local), N + 1 + N + 1 and N locks on
//!   Redis.
//! - **affinity**: as unary, but every peer reads `req` and claims; the
//!   client grants the first claim and ignores the later ones. 3 + N
//!   publishes, 3N + 1 deliveries.
//! - **stream message round trip**: the client publishes the message on
//!   `srv`, which every peer reads; the owning peer (peer 0) publishes an
//!   ack and the echo on `rep`; the client, having both, publishes its ack
//!   of the echo on `srv`, and the operation ends. The owning peer waits
//!   for that ack before it takes the next message, as a stream's send
//!   waits for its ack. 4 publishes, 2N + 2 deliveries.
//!
//! (`multi`'s wire is its raw floor, a ping-pong fanned out to N peers.)
//!
//! The client reads `rep` as the runtime reads a client's channels: a
//! handler where the bus delivers passes on what belongs to the current
//! operation and drops the rest (see `Replies`).
//!
//! Every message starts with a one-byte tag (and the peer's number, where
//! the client must tell peers apart) and the operation's id, unique in the
//! process: Redis takes its queue lock on the hash of the message, so two
//! equal requests within the lock's lifetime would share one lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use psrpc::bus::{DynBus, HandlerSubscription, RawSubscription};
use psrpc::{Channel, MessageBus};
use tokio::sync::mpsc;

use crate::CALL_TIMEOUT;
use crate::bus_floors::{AbortOnDrop, floor_channel};
use crate::stats::{Stats, join_workers};

/// The psrpc operation whose wire work a wire floor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WireShape {
    /// A queue call: request to one peer, claim, grant to every peer,
    /// response.
    Unary,
    /// An affinity call: request to every peer, a claim from each, grant
    /// to every peer, response from the granted one.
    Affinity,
    /// A stream message round trip: message to every peer, ack and echo
    /// from the owner, the client's ack to every peer.
    Stream,
}

/// Tag of a client's request (unary, affinity) or stream message.
const REQUEST: u8 = b'Q';
/// Tag of a peer's claim.
const CLAIM: u8 = b'C';
/// Tag of the client's grant of a claim.
const GRANT: u8 = b'G';
/// Tag of a peer's response.
const RESPONSE: u8 = b'R';
/// Tag of the owning peer's ack of a stream message.
const ACK: u8 = b'A';
/// Tag of the owning peer's echo of a stream message.
const ECHO: u8 = b'E';
/// Tag of the client's ack of an echo.
const CLIENT_ACK: u8 = b'K';

/// Bytes before the body: tag, peer number, operation id.
const HEADER: usize = 1 + 2 + 8;

/// A message: `tag`, `peer`, `id`, then `body`.
fn message(tag: u8, peer: u16, id: u64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + body.len());
    b.put_u8(tag);
    b.put_u16_le(peer);
    b.put_u64_le(id);
    b.extend_from_slice(body);
    b.freeze()
}

/// The tag, peer and id of a message, and its body; `None` when it is too
/// short to be one of ours.
fn parse(m: &Bytes) -> Option<(u8, u16, u64, Bytes)> {
    let h = m.get(..HEADER)?;
    let peer = u16::from_le_bytes([h[1], h[2]]);
    let id = u64::from_le_bytes(h[3..HEADER].try_into().ok()?);
    Some((h[0], peer, id, m.slice(HEADER..)))
}

/// A new operation id, unique in this process and, started from the clock,
/// most likely across processes on the same broker.
fn op_id() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One wire floor worker, set up: the client's channels and its reply
/// subscription; the peers' tasks run until it is dropped.
struct WireWorker {
    /// Where the client publishes: `req` (unary, affinity) or `srv`
    /// (stream).
    out: Channel,
    /// Where the client grants a claim (unary, affinity).
    grant: Channel,
    /// What reaches the client on `rep` for its current operation.
    rep: Replies,
    _peers: Vec<AbortOnDrop>,
}

/// Runs `conc` workers of the wire floor `shape` for `duration`: the
/// client side on `client`, one peer on each of `peers` (the `--servers`
/// connections). Subscriptions are set up before the clock starts.
pub(crate) async fn measure_wire_floor(
    shape: WireShape,
    conc: usize,
    duration: Duration,
    payload: Bytes,
    client: &DynBus,
    peers: &[DynBus],
) -> Stats {
    let tag = psrpc::protocol::id::new_id("");
    let mut workers = Vec::with_capacity(conc);
    for w in 0..conc {
        match wire_worker(shape, &tag, w, client, peers).await {
            Ok(wk) => workers.push(wk),
            Err(e) => return Stats::failed(format!("wire floor setup: {e}")),
        }
    }
    let start = Instant::now();
    let end = start + duration;
    let tasks = workers
        .into_iter()
        .map(|mut wk| {
            let (client, payload) = (client.clone(), payload.clone());
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let r = match shape {
                        WireShape::Unary | WireShape::Affinity => {
                            claimed_call(&mut wk, &client, &payload).await
                        }
                        WireShape::Stream => stream_round_trip(&mut wk, &client, &payload).await,
                    };
                    stats.record(r.map(|()| t0.elapsed()));
                }
                stats
            })
        })
        .collect();
    join_workers(tasks, start, "wire floor").await
}

/// Sets up wire floor worker `w`: the client's `rep` subscription and one
/// peer task per connection of `peers`, subscribed as the wire requires.
async fn wire_worker(
    shape: WireShape,
    tag: &str,
    w: usize,
    client: &DynBus,
    peers: &[DynBus],
) -> psrpc::Result<WireWorker> {
    let name = |what: &str| floor_channel(format!("psrpc-bench.wire-floor.{tag}.{w}.{what}"));
    let (out, grant, rep_ch) = (name("req"), name("grant"), name("rep"));
    let size = psrpc::client::DEFAULT_CHANNEL_SIZE;
    let rep = Replies::subscribe(client, &rep_ch, size).await?;
    let mut tasks = Vec::with_capacity(peers.len());
    for (i, peer) in peers.iter().enumerate() {
        let me = u16::try_from(i).unwrap_or(u16::MAX);
        let (bus, rep_ch) = (peer.clone(), rep_ch.clone());
        let task = match shape {
            WireShape::Unary | WireShape::Affinity => {
                let reqs = if shape == WireShape::Unary {
                    peer.subscribe_queue(&out, size).await?
                } else {
                    peer.subscribe(&out, size).await?
                };
                let grants = peer.subscribe(&grant, size).await?;
                tokio::spawn(claiming_peer(me, bus, reqs, grants, rep_ch))
            }
            WireShape::Stream => {
                let msgs = peer.subscribe(&out, size).await?;
                tokio::spawn(stream_peer(i == 0, bus, msgs, rep_ch))
            }
        };
        tasks.push(AbortOnDrop(task));
    }
    Ok(WireWorker {
        out,
        grant,
        rep,
        _peers: tasks,
    })
}

/// A peer of a unary or affinity call: claims every request it reads,
/// remembers the last one, and answers it when a grant names it. A message
/// it cannot read is ignored (its call then times out and counts an error).
async fn claiming_peer(
    me: u16,
    bus: DynBus,
    mut reqs: RawSubscription,
    mut grants: RawSubscription,
    rep: Channel,
) {
    let mut pending: Option<(u64, Bytes)> = None;
    loop {
        let out = tokio::select! {
            m = reqs.recv() => {
                let Some(m) = m else { return };
                match parse(&m) {
                    Some((REQUEST, _, id, body)) => {
                        pending = Some((id, body));
                        message(CLAIM, me, id, &[])
                    }
                    _ => continue,
                }
            }
            g = grants.recv() => {
                let Some(g) = g else { return };
                match (parse(&g), &pending) {
                    (Some((GRANT, peer, id, _)), Some((want, _))) if peer == me && id == *want => {
                        let (id, body) = pending.take().expect("matched above");
                        message(RESPONSE, me, id, &body)
                    }
                    _ => continue,
                }
            }
        };
        if bus.publish(&rep, out).await.is_err() {
            return;
        }
    }
}

/// A peer of a stream: every peer reads every message of `srv`; the owner
/// acks and echoes a message, then waits for the client's ack of the echo
/// before it takes the next one. The others read and drop them, as the
/// servers that do not hold the stream do.
async fn stream_peer(owner: bool, bus: DynBus, mut msgs: RawSubscription, rep: Channel) {
    let mut awaiting: Option<u64> = None;
    while let Some(m) = msgs.recv().await {
        if !owner {
            continue;
        }
        match (parse(&m), awaiting) {
            (Some((REQUEST, _, id, body)), None) => {
                for out in [message(ACK, 0, id, &[]), message(ECHO, 0, id, &body)] {
                    if bus.publish(&rep, out).await.is_err() {
                        return;
                    }
                }
                awaiting = Some(id);
            }
            (Some((CLIENT_ACK, _, id, _)), Some(want)) if id == want => awaiting = None,
            // A message before the ack of the last echo, or one we cannot
            // read: dropped, so the client times out and counts the error.
            _ => {}
        }
    }
}

/// The client's side of `rep`, read as the runtime reads a client's
/// channels: a handler called where the bus delivers
/// (`subscribe_inline`) passes on what belongs to the current operation and
/// drops the rest at once (the claims of other peers that come after the
/// operation ended). A buffer read only by the client would fill with those
/// when peers fall behind, and lose the reply queued after them.
struct Replies {
    /// The operation whose replies are passed on.
    current: Arc<AtomicU64>,
    rx: mpsc::Receiver<(u8, u16, u64)>,
    _sub: HandlerSubscription,
}

impl Replies {
    async fn subscribe(client: &DynBus, rep: &Channel, size: usize) -> psrpc::Result<Replies> {
        let current = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(size);
        let now = current.clone();
        let sub = client
            .subscribe_inline(
                rep,
                size,
                Arc::new(move |m: Bytes| {
                    if let Some((tag, peer, id, _)) = parse(&m)
                        && id == now.load(Ordering::Acquire)
                    {
                        // Full only if the client stopped reading.
                        let _ = tx.try_send((tag, peer, id));
                    }
                }),
            )
            .await?;
        Ok(Replies {
            current,
            rx,
            _sub: sub,
        })
    }

    /// Passes on the replies of operation `id` from now on.
    fn start(&self, id: u64) {
        self.current.store(id, Ordering::Release);
    }

    /// The next reply of the current operation, or why none came. (Those
    /// of the previous one that were passed on before it ended are passed
    /// over.)
    async fn next(&mut self) -> Result<(u8, u16, u64), String> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) if r.2 == self.current.load(Ordering::Acquire) => return Ok(r),
                Ok(Some(_)) => {}
                Ok(None) => return Err("wire floor: reply subscription closed".into()),
                Err(_) => return Err(format!("wire floor: no reply within {CALL_TIMEOUT:?}")),
            }
        }
    }
}

/// One unary or affinity call: request, first claim granted, response.
async fn claimed_call(wk: &mut WireWorker, client: &DynBus, payload: &Bytes) -> Result<(), String> {
    let id = op_id();
    wk.rep.start(id);
    client
        .publish(&wk.out, message(REQUEST, 0, id, payload))
        .await
        .map_err(|e| format!("wire floor publish: {e}"))?;
    let mut granted = None;
    loop {
        let (tag, peer, _) = wk.rep.next().await?;
        match (tag, granted) {
            (CLAIM, None) => {
                client
                    .publish(&wk.grant, message(GRANT, peer, id, &[]))
                    .await
                    .map_err(|e| format!("wire floor grant: {e}"))?;
                granted = Some(peer);
            }
            (RESPONSE, Some(p)) if p == peer => return Ok(()),
            (RESPONSE, _) => return Err(format!("wire floor: response of peer {peer} unasked")),
            _ => {}
        }
    }
}

/// One stream message round trip: message, the owner's ack and echo, the
/// client's ack.
async fn stream_round_trip(
    wk: &mut WireWorker,
    client: &DynBus,
    payload: &Bytes,
) -> Result<(), String> {
    let id = op_id();
    wk.rep.start(id);
    client
        .publish(&wk.out, message(REQUEST, 0, id, payload))
        .await
        .map_err(|e| format!("wire floor publish: {e}"))?;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        match wk.rep.next().await? {
            (ACK, _, _) => acked = true,
            (ECHO, _, _) => echoed = true,
            (tag, _, got) => {
                return Err(format!(
                    "wire floor: {:?} of {got} while waiting for {id}",
                    tag as char
                ));
            }
        }
    }
    client
        .publish(&wk.out, message(CLIENT_ACK, 0, id, &[]))
        .await
        .map_err(|e| format!("wire floor ack: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use psrpc::LocalBus;
    use psrpc_tests::servers::{NatsServer, RedisServer};
    use tokio::sync::mpsc;

    use super::*;
    use crate::args::BusSpec;
    use crate::conn::Connector;
    use crate::floors::{FloorKind, Floors};

    /// What the buses of a [`Counting`] did.
    #[derive(Default)]
    struct Counts {
        publishes: AtomicUsize,
        /// Messages handed to a subscriber.
        deliveries: AtomicUsize,
        queue_subscriptions: AtomicUsize,
        subscriptions: AtomicUsize,
    }

    impl Counts {
        fn get(&self) -> [usize; 2] {
            [
                self.publishes.load(Ordering::SeqCst),
                self.deliveries.load(Ordering::SeqCst),
            ]
        }
    }

    /// A bus that counts what goes through it into a shared [`Counts`].
    struct Counting {
        inner: DynBus,
        counts: Arc<Counts>,
    }

    impl Counting {
        /// Hands on the messages of `sub`, counting each.
        fn count(&self, mut sub: RawSubscription, size: usize) -> RawSubscription {
            let (tx, rx) = mpsc::channel(size);
            let counts = self.counts.clone();
            let task = tokio::spawn(async move {
                while let Some(m) = sub.recv().await {
                    counts.deliveries.fetch_add(1, Ordering::SeqCst);
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            });
            RawSubscription::new(rx, move || task.abort())
        }
    }

    #[psrpc::async_trait]
    impl MessageBus for Counting {
        async fn publish(&self, channel: &Channel, msg: Bytes) -> psrpc::Result<()> {
            self.counts.publishes.fetch_add(1, Ordering::SeqCst);
            self.inner.publish(channel, msg).await
        }

        async fn subscribe(
            &self,
            channel: &Channel,
            size: usize,
        ) -> psrpc::Result<RawSubscription> {
            self.counts.subscriptions.fetch_add(1, Ordering::SeqCst);
            let sub = self.inner.subscribe(channel, size).await?;
            Ok(self.count(sub, size))
        }

        async fn subscribe_queue(
            &self,
            channel: &Channel,
            size: usize,
        ) -> psrpc::Result<RawSubscription> {
            self.counts
                .queue_subscriptions
                .fetch_add(1, Ordering::SeqCst);
            let sub = self.inner.subscribe_queue(channel, size).await?;
            Ok(self.count(sub, size))
        }
    }

    /// Polls `f` until it holds; fails after 20 s, saying `what()`.
    async fn wait_for(what: impl Fn() -> String, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {}",
                what()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// On the local bus (which has queue groups, as NATS), with 3 peers,
    /// one operation of each shape moves what psrpc's wire moves with 3
    /// servers: unary 4 publishes and 6 deliveries (request to one queue
    /// member, claim, grant to all 3, response), with one queue
    /// subscription per peer; affinity 6 and 10 (request to all 3, 3
    /// claims, grant to all 3, response); stream 4 and 8 (message to all
    /// 3, ack, echo, ack to all 3). Counted by a wrapper of the bus around
    /// 100 sequential operations, once every message has arrived and every
    /// task that could send another has run: on one thread, a turn for
    /// every ready task, so that a message too many is counted too.
    #[tokio::test]
    async fn shapes_move_the_wires_messages() {
        const OPS: usize = 100;
        let payload = crate::payload::text_payload(64);
        for (shape, publishes, deliveries, queue_subs, subs) in [
            (WireShape::Unary, 4, 6, 3, 1 + 3),
            (WireShape::Affinity, 6, 10, 0, 1 + 2 * 3),
            (WireShape::Stream, 4, 8, 0, 1 + 3),
        ] {
            let counts = Arc::new(Counts::default());
            let local: DynBus = Arc::new(LocalBus::new());
            let bus: DynBus = Arc::new(Counting {
                inner: local,
                counts: counts.clone(),
            });
            let peers = vec![bus.clone(); 3];
            let mut wk = wire_worker(shape, "count", 0, &bus, &peers).await.unwrap();
            assert_eq!(
                counts.queue_subscriptions.load(Ordering::SeqCst),
                queue_subs,
                "{shape:?}: queue subscriptions"
            );
            assert_eq!(
                counts.subscriptions.load(Ordering::SeqCst),
                subs,
                "{shape:?}: subscriptions"
            );
            for _ in 0..OPS {
                match shape {
                    WireShape::Unary | WireShape::Affinity => {
                        claimed_call(&mut wk, &bus, &payload).await
                    }
                    WireShape::Stream => stream_round_trip(&mut wk, &bus, &payload).await,
                }
                .unwrap();
            }
            let want = [publishes * OPS, deliveries * OPS];
            let what = || format!("{shape:?}: {want:?} (got {:?})", counts.get());
            wait_for(what, || counts.get().iter().zip(want).all(|(g, w)| *g >= w)).await;
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            assert_eq!(counts.get(), want, "{shape:?}: publishes, deliveries");
        }
    }

    /// Every shape completes operations without errors, one at a time and
    /// 8 at a time, on the bus of `spec`, through the floors' cache (a
    /// bus of its own on `local`, a connection per peer elsewhere).
    async fn shapes_complete(spec: BusSpec) {
        let mut connector = Connector::new(spec, 0);
        let payload = crate::payload::text_payload(256);
        let mut floors = Floors::new(Duration::from_millis(300), payload, "c", 0);
        for shape in [WireShape::Unary, WireShape::Affinity, WireShape::Stream] {
            for conc in [1, 8] {
                let kind = FloorKind::Wire { shape, servers: 3 };
                let s = floors.get(kind, conc, &mut connector).await.unwrap();
                assert_eq!(s.errors, 0, "{shape:?} conc {conc}: {:?}", s.first_error);
                assert!(s.n > 0, "{shape:?} conc {conc}: {} operations", s.n);
            }
        }
    }

    /// On the local bus.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shapes_complete_on_local() {
        shapes_complete(BusSpec::Local).await;
    }

    /// On a real redis-server, where every peer reads each queue request
    /// and one wins its lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shapes_complete_on_redis() {
        let server = RedisServer::start();
        shapes_complete(BusSpec::Redis(server.url())).await;
    }

    /// On a real nats-server, with queue groups.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shapes_complete_on_nats() {
        let server = NatsServer::start(&[]);
        shapes_complete(BusSpec::Nats(server.url())).await;
    }
}
