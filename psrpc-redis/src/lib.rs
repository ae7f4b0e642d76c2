//! The Redis bus of psrpc, wire-compatible with Go psrpc's `NewRedisMessageBus`.
//!
//! ```no_run
//! use psrpc::{MessageBus, Channel};
//! use psrpc_redis::RedisBus;
//!
//! # async fn run() -> psrpc::Result<()> {
//! // One bus per process; clones share its connections.
//! let bus = RedisBus::connect("redis://127.0.0.1:6379").await?;
//! let channel = Channel {
//!     legacy: "my-channel".into(),
//!     server: String::new(),
//!     local: String::new(),
//! };
//! let mut sub = bus.subscribe(&channel, 100).await?; // SUBSCRIBE acknowledged
//! bus.publish(&channel, bytes::Bytes::from_static(b"hello")).await?;
//! assert_eq!(sub.recv().await.as_deref(), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! Give the bus to `psrpc::RpcClient` / `psrpc::RpcServer` as any other bus.
//!
//! # Wire format
//!
//! * The Redis channel is [`Channel::legacy`](psrpc::Channel::legacy)
//!   (preceded by the optional [prefix](RedisBus::with_prefix)); the payload
//!   is the encoded `Msg` exactly as given (Redis buses never set
//!   `Msg.channel`).
//! * Fan-out subscriptions (`subscribe`) get every message of the channel.
//! * Queue subscriptions (`subscribe_queue`) are emulated as Go psrpc does:
//!   in each bus, one queue subscriber of the channel is picked (round-robin)
//!   and it takes the message only if it wins
//!   `SET <base64(sha256(payload))> <random> EX 5 NX`, so among all Go and
//!   Rust processes queue-subscribed to the channel exactly one delivers it.
//!   Side effect (as in Go): byte-identical payloads published within 5 s on
//!   a queue channel are delivered once in total.
//!
//! # Connections
//!
//! A bus holds two connections:
//!
//! * a multiplexed command connection (a [`redis::aio::ConnectionManager`],
//!   which reconnects by itself) for `PUBLISH` and the queue locks. Publishes
//!   are queued in order and a writer sends everything queued as one
//!   pipeline, so order is preserved per bus and a burst costs few round
//!   trips. Like Go, `publish` does not wait for Redis: it fails only if the
//!   bus is gone; errors while sending are logged with `tracing`;
//! * one pub/sub connection shared by every subscription of the bus, owned
//!   by a background task. `subscribe` returns once Redis has acknowledged
//!   the `SUBSCRIBE` (within 5 s, else an `unavailable` error), so a message
//!   published afterwards is received; no settle delay is needed. Concurrent
//!   subscribes are pipelined, one `SUBSCRIBE` per channel whatever the
//!   number of local subscribers. The channel is unsubscribed when its last
//!   subscription in the bus is closed.
//!
//! # Outages
//!
//! If the pub/sub connection is lost the bus reconnects (at once, then
//! backing off from 100 ms doubling to 1 s) and re-subscribes every channel
//! that still has subscribers; subscriptions stay open throughout. Redis
//! pub/sub is at-most-once: **messages published while a connection is down
//! are lost** — publishes that fail are dropped (and logged), and messages
//! published by others while this bus's pub/sub connection is down are never
//! seen by it. RPCs in flight during an outage therefore time out; new RPCs
//! work again once Redis is back, without rebuilding clients or servers.
//! `subscribe` during an outage fails after 5 s with `unavailable`.
//!
//! # Slow consumers
//!
//! Every subscription has a bounded buffer. The reader offers each message
//! without waiting; a subscriber whose buffer is full gets up to 100 ms
//! ([`RedisBus::with_slow_consumer_timeout`]) to make room, then the message
//! is dropped for it alone, logged at warn level and counted in
//! [`RedisBus::dropped`] — the same policy as `psrpc::LocalBus`. (Go's reader
//! blocks the whole bus on a full subscriber.)
//!
//! # Sharing one Redis between deployments
//!
//! [`RedisBus::with_prefix`] prepends a string to every channel name, so
//! deployments using different prefixes on one Redis never hear each other.
//! Queue lock keys are not prefixed (they are hashes of the payload, as in
//! Go). A prefixed bus only talks to peers using the same prefix; use no
//! prefix to interoperate with Go psrpc.
//!
//! Not supported: Redis Cluster and Sentinel.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use psrpc::bus::{Channel, MessageBus, Subscription};
use psrpc::{Error, ErrorCode, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubSink, PubSubStream};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const PUBLISH_QUEUE: usize = 65_536;
const PUBLISH_BATCH: usize = 4_096;
const LOCK_PIPELINE: usize = 64;
const LOCK_RETRIES: u32 = 3;

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Makes sure the command connection works again after an outage (the
/// connection manager only notices a dead connection when a command fails).
async fn heal(conn: &mut ConnectionManager) {
    for _ in 0..10 {
        match redis::cmd("PING").query_async::<()>(conn).await {
            Ok(()) => return,
            Err(_) => tokio::time::sleep(BACKOFF_MIN).await,
        }
    }
}

/// The psrpc bus over Redis pub/sub. Clones share the connections.
///
/// See the [crate documentation](crate) for semantics.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
    prefix: Arc<str>,
    slow_timeout: Duration,
}

struct Inner {
    conn: ConnectionManager,
    publish_tx: mpsc::Sender<(String, Bytes)>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    subs: Arc<SubMap>,
    next_id: AtomicU64,
}

/// Subscribers by full Redis channel name, shared with the reader.
struct SubMap {
    channels: Mutex<HashMap<String, Arc<Subscribers>>>,
    dropped: AtomicU64,
}

#[derive(Default, Clone)]
struct Subscribers {
    fanout: Vec<(u64, Target)>,
    /// Queue members: senders to each member's lock task.
    queue: Vec<(u64, Target)>,
    rr: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Target {
    tx: mpsc::Sender<Bytes>,
    slow_timeout: Duration,
}

enum Command {
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        channel: String,
    },
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix)
            .field("dropped", &self.dropped())
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("redis: {what}: {e}"))
}

impl RedisBus {
    /// Connects to the Redis at `url` (`redis://[:password@]host:port[/db]`).
    ///
    /// Fails with an `unavailable` error if the URL is invalid, the server is
    /// unreachable or authentication fails.
    pub async fn connect(url: &str) -> Result<RedisBus> {
        let client = redis::Client::open(url).map_err(|e| unavailable("invalid url", e))?;
        Self::from_client(client).await
    }

    /// A bus over an existing client. Opens the connections and checks them
    /// with `PING`: fails with an `unavailable` error if the server is
    /// unreachable or authentication fails.
    pub async fn from_client(client: redis::Client) -> Result<RedisBus> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable("PING failed", e))?;
        let mut pubsub = open_pubsub(&client)
            .await
            .map_err(|e| unavailable("cannot open the pub/sub connection", e))?;
        pubsub
            .ping::<()>()
            .await
            .map_err(|e| unavailable("pub/sub PING failed", e))?;

        let subs = Arc::new(SubMap {
            channels: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        });
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(writer(publish_rx, conn.clone()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        tokio::spawn(manager(client, conn.clone(), pubsub, cmd_rx, subs.clone()));
        Ok(RedisBus {
            inner: Arc::new(Inner {
                conn,
                publish_tx,
                cmd_tx,
                subs,
                next_id: AtomicU64::new(1),
            }),
            prefix: Arc::from(""),
            slow_timeout: Duration::from_millis(100),
        })
    }

    /// A handle on the same connections that prepends `prefix` to every
    /// channel name, isolating it from buses with another prefix on the same
    /// Redis (see the [crate documentation](crate#sharing-one-redis-between-deployments)).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// A handle that gives a full subscriber `timeout` (default 100 ms) to
    /// make room before a message is dropped for it. Applies to
    /// subscriptions made through the returned handle.
    pub fn with_slow_consumer_timeout(mut self, timeout: Duration) -> Self {
        self.slow_timeout = timeout;
        self
    }

    /// The channel-name prefix of this handle (empty by default).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many deliveries were dropped because a subscriber stayed full.
    pub fn dropped(&self) -> u64 {
        self.inner.subs.dropped.load(Ordering::Relaxed)
    }

    fn name(&self, channel: &Channel) -> String {
        format!("{}{}", self.prefix, channel.legacy)
    }

    async fn add(&self, channel: &Channel, size: usize, queue: bool) -> Result<Subscription> {
        let key = self.name(channel);
        let size = size.max(1);
        let (tx, rx) = mpsc::channel(size);
        let target = if queue {
            let (ptx, prx) = mpsc::channel(size);
            tokio::spawn(queue_member(prx, tx, self.inner.conn.clone()));
            ptx
        } else {
            tx
        };
        let target = Target {
            tx: target,
            slow_timeout: self.slow_timeout,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self.inner.subs.lock();
            let mut subs = map.get(&key).map(|s| (**s).clone()).unwrap_or_default();
            if queue {
                subs.queue.push((id, target));
            } else {
                subs.fanout.push((id, target));
            }
            map.insert(key.clone(), Arc::new(subs));
        }
        let subs = Arc::downgrade(&self.inner.subs);
        let cmd_tx = self.inner.cmd_tx.clone();
        let closing_key = key.clone();
        // Made before subscribing so that failing below cleans up.
        let sub = Subscription::new(rx, move || {
            let Some(subs) = subs.upgrade() else { return };
            let mut map = subs.lock();
            let Some(cur) = map.get(&closing_key) else {
                return;
            };
            let mut s = (**cur).clone();
            s.fanout.retain(|(i, _)| *i != id);
            s.queue.retain(|(i, _)| *i != id);
            if s.fanout.is_empty() && s.queue.is_empty() {
                map.remove(&closing_key);
                let _ = cmd_tx.send(Command::Unsubscribe {
                    channel: closing_key,
                });
            } else {
                map.insert(closing_key, Arc::new(s));
            }
        });
        let (reply, ack) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(Command::Subscribe {
                channel: key,
                reply,
            })
            .map_err(|_| Error::new(ErrorCode::Unavailable, "redis: bus stopped"))?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ack).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::new(ErrorCode::Unavailable, "redis: bus stopped")),
            Err(_) => Err(Error::new(
                ErrorCode::Unavailable,
                "redis: SUBSCRIBE not acknowledged in time",
            )),
        }
    }
}

impl SubMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Subscribers>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, channel: &str) -> Option<Arc<Subscribers>> {
        self.lock().get(channel).cloned()
    }

    fn contains(&self, channel: &str) -> bool {
        self.lock().contains_key(channel)
    }

    fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

#[async_trait]
impl MessageBus for RedisBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        self.inner
            .publish_tx
            .send((self.name(channel), msg))
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "redis: bus stopped"))
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add(channel, size, false).await
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add(channel, size, true).await
    }
}

/// The Go queue lock key of a payload: base64 (standard, padded) of its SHA-256.
pub fn queue_lock_key(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(payload))
}

fn random_int() -> i64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (std::collections::hash_map::RandomState::new().hash_one(n) >> 1) as i64
}

async fn open_pubsub(client: &redis::Client) -> redis::RedisResult<PubSub> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}

/// Sends queued publishes, everything queued at once as one pipeline.
async fn writer(mut rx: mpsc::Receiver<(String, Bytes)>, mut conn: ConnectionManager) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, msg) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&msg[..]).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(
                error = %e,
                "redis bus: {} publish(es) lost",
                batch.len()
            );
        }
        batch.clear();
    }
}

/// A queue member: takes the Go lock of each message offered to it and
/// delivers the ones it wins, in order.
async fn queue_member(
    mut pending: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    conn: ConnectionManager,
) {
    let stream = futures::stream::poll_fn(move |cx| pending.poll_recv(cx));
    let mut won = stream
        .map(|msg| {
            let mut conn = conn.clone();
            async move {
                let key = queue_lock_key(&msg);
                let mut attempt = 0;
                loop {
                    let acquired: redis::RedisResult<Option<String>> = redis::cmd("SET")
                        .arg(&key)
                        .arg(random_int())
                        .arg("EX")
                        .arg(5)
                        .arg("NX")
                        .query_async(&mut conn)
                        .await;
                    match acquired {
                        Ok(Some(_)) => return Some(msg),
                        Ok(None) => return None,
                        // The connection manager reconnects after a failure:
                        // a lock is safe to ask again.
                        Err(e) if attempt < LOCK_RETRIES && is_connection_error(&e) => {
                            attempt += 1;
                            tokio::time::sleep(BACKOFF_MIN).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "redis bus: queue lock failed, message skipped");
                            return None;
                        }
                    }
                }
            }
        })
        .buffered(LOCK_PIPELINE);
    while let Some(msg) = won.next().await {
        if let Some(msg) = msg
            && tx.send(msg).await.is_err()
        {
            return;
        }
    }
}

/// Owns the pub/sub connection: applies subscribe commands, reconnects and
/// re-subscribes after a loss.
async fn manager(
    client: redis::Client,
    mut conn: ConnectionManager,
    initial: PubSub,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    subs: Arc<SubMap>,
) {
    let mut next = Some(initial);
    let mut backoff = Duration::ZERO;
    loop {
        if cmds.is_closed() {
            return;
        }
        let pubsub = match next.take() {
            Some(p) => p,
            None => {
                if !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                match open_pubsub(&client).await {
                    Ok(p) => {
                        heal(&mut conn).await;
                        p
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis bus: pub/sub reconnect failed");
                        continue;
                    }
                }
            }
        };
        let (sink, stream) = pubsub.split();
        let channels = subs.keys();
        if !channels.is_empty() {
            // One channel per command: the client pairs one ack per request.
            let all = futures::future::join_all(channels.iter().map(|c| {
                let mut sink = sink.clone();
                async move { sink.subscribe(c).await }
            }));
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, all).await {
                Ok(r) if r.iter().all(|r| r.is_ok()) => {
                    tracing::info!("redis bus: re-subscribed {} channel(s)", channels.len());
                }
                _ => {
                    tracing::warn!("redis bus: re-subscribing failed, reconnecting");
                    continue;
                }
            }
        }
        backoff = Duration::ZERO;
        let mut reader = tokio::spawn(read(stream, subs.clone()));
        if !serve(&mut cmds, sink, &mut reader, &subs).await {
            reader.abort();
            return;
        }
        reader.abort();
        tracing::warn!("redis bus: pub/sub connection lost, reconnecting");
    }
}

/// Applies commands until the connection is lost (true) or the bus is gone
/// (false).
///
/// Commands queued together are reconciled as a batch: for every channel
/// they touch, the wanted state is read from the subscriber map at that
/// moment (subscribed if it has local subscribers), and one `SUBSCRIBE` or
/// `UNSUBSCRIBE` per channel is sent, all pipelined; waiting subscribers are
/// answered once Redis acknowledged.
async fn serve(
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    sink: PubSubSink,
    reader: &mut tokio::task::JoinHandle<()>,
    subs: &SubMap,
) -> bool {
    loop {
        let first = tokio::select! {
            _ = &mut *reader => return true,
            cmd = cmds.recv() => match cmd {
                None => return false,
                Some(cmd) => cmd,
            },
        };
        let mut batch = vec![first];
        while let Ok(cmd) = cmds.try_recv() {
            batch.push(cmd);
        }
        let mut touched: Vec<String> = Vec::new();
        let mut waiting: HashMap<String, Vec<oneshot::Sender<Result<()>>>> = HashMap::new();
        for cmd in batch {
            let channel = match cmd {
                Command::Subscribe { channel, reply } => {
                    waiting.entry(channel.clone()).or_default().push(reply);
                    channel
                }
                Command::Unsubscribe { channel } => channel,
            };
            if !touched.contains(&channel) {
                touched.push(channel);
            }
        }
        let results = futures::future::join_all(touched.iter().map(|channel| {
            let mut sink = sink.clone();
            let want = subs.contains(channel);
            async move {
                let r = if want {
                    sink.subscribe(channel).await
                } else {
                    sink.unsubscribe(channel).await
                };
                r.map_err(|e| {
                    let what = if want { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
                    unavailable(&format!("{what} {channel} failed"), e)
                })
            }
        }));
        let results = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, results).await {
            Ok(r) => r,
            Err(_) => {
                let e = Error::new(
                    ErrorCode::Unavailable,
                    "redis: SUBSCRIBE not acknowledged in time",
                );
                touched.iter().map(|_| Err(e.clone())).collect()
            }
        };
        let mut lost = false;
        for (channel, r) in touched.iter().zip(results) {
            lost |= r.is_err();
            for reply in waiting.remove(channel).unwrap_or_default() {
                let _ = reply.send(r.clone());
            }
        }
        if lost {
            return true;
        }
    }
}

/// Reads the pub/sub connection and dispatches, until it is lost.
async fn read(mut stream: PubSubStream, subs: Arc<SubMap>) {
    while let Some(msg) = stream.next().await {
        let Some(targets) = subs.get(msg.get_channel_name()) else {
            continue;
        };
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        dispatch(&subs, msg.get_channel_name(), &targets, payload).await;
    }
}

async fn dispatch(subs: &SubMap, channel: &str, targets: &Subscribers, msg: Bytes) {
    let mut slow: Vec<&Target> = Vec::new();
    for (_, t) in &targets.fanout {
        if let Err(mpsc::error::TrySendError::Full(_)) = t.tx.try_send(msg.clone()) {
            slow.push(t);
        }
    }
    let n = targets.queue.len();
    if n > 0 {
        let start = targets.rr.fetch_add(1, Ordering::Relaxed);
        let mut full = None;
        let mut delivered = false;
        for k in 0..n {
            let t = &targets.queue[(start + k) % n].1;
            match t.tx.try_send(msg.clone()) {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full.get_or_insert(t);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if let (false, Some(t)) = (delivered, full) {
            slow.push(t);
        }
    }
    for t in slow {
        psrpc::bus::deliver_within(&t.tx, msg.clone(), t.slow_timeout, &subs.dropped, channel)
            .await;
    }
}
