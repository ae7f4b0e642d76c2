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
//! # Topologies
//!
//! | topology | constructor | tested here |
//! |---|---|---|
//! | one server (password, ACL user, database, TLS through the URL or a configured [`redis::Client`]) | [`RedisBus::connect`], [`RedisBus::from_client`] | yes (TLS: not tested) |
//! | Redis Cluster | [`RedisBus::connect_cluster`], [`RedisBus::from_cluster`] | yes, 3 masters on loopback, clients and servers on different nodes |
//! | Sentinel-managed master | [`RedisBus::connect_sentinel`], [`RedisBus::from_sentinel`] | yes, master failover on loopback |
//!
//! * **Cluster**: psrpc uses classic pub/sub (`PUBLISH`/`SUBSCRIBE`, as Go
//!   psrpc does), which Redis Cluster broadcasts to every node: the bus
//!   publishes and subscribes on one node of the cluster (moving to the next
//!   one it knows when that node fails), and takes the queue locks through a
//!   cluster client that sends each `SET` to the master of its key's slot.
//!   Sharded pub/sub (`SPUBLISH`) is not used: Go peers would not hear it.
//!   The broadcast makes every node carry every message, so pub/sub does not
//!   scale out with the number of shards.
//! * **Sentinel**: every (re)connection asks the sentinels for the current
//!   master, so after a failover the bus follows the new master.
//! * TLS needs this crate's `tls` feature (redis' rustls support) and a
//!   `rediss://` URL or a client configured with certificates.
//!
//! # Wire format
//!
//! * The Redis channel is [`Channel::legacy`](psrpc::Channel::legacy)
//!   (preceded by the optional [prefix](RedisBus::with_prefix)); the payload
//!   is the encoded `Msg` exactly as given (this port never sets
//!   `Msg.channel` on Redis, as Go v0.7 does; a payload that carries it,
//!   as Go v0.8 writes them, is read all the same).
//! * Fan-out subscriptions (`subscribe`) get every message of the channel.
//! * Queue subscriptions (`subscribe_queue`) are emulated as Go psrpc does:
//!   a message is taken by this bus only if it wins
//!   `SET <base64(sha256(payload))> <random> EX 5 NX` (the key unprefixed,
//!   [`queue_lock_key`]), so among all Go and Rust processes
//!   queue-subscribed to the channel exactly one delivers it; within the bus
//!   it goes to one queue subscriber (round-robin). Side effect (as in Go,
//!   see docs/PROTOCOL.md, "Redis specifics"): byte-identical payloads published within 5 s on a queue
//!   channel are delivered once in total.
//!
//! # Connections
//!
//! A bus holds two connections (clones share them):
//!
//! * a command connection for `PUBLISH` and the queue locks (in a cluster
//!   the locks go through the cluster client's connections instead):
//!   publishes are queued in order and a writer sends
//!   everything queued as one pipeline, so order is preserved per bus and a
//!   burst costs few round trips. Like Go, `publish` does not wait for
//!   Redis: it fails only when the bus is gone or its queue stays full for a
//!   second (Redis unreachable); errors while sending are logged with
//!   `tracing`. Queue locks are pipelined: a message waiting for its lock does not
//!   hold up the others, and queue deliveries keep their order;
//! * one pub/sub connection shared by every subscription of the bus, read by
//!   one task. `subscribe` returns once Redis has acknowledged the `SUBSCRIBE` (within 5 s, else an
//!   `unavailable` error), so a message published afterwards is received; no
//!   settle delay is needed. Concurrent subscribes are pipelined, one
//!   `SUBSCRIBE` per channel whatever the number of local subscribers. The
//!   channel is unsubscribed when its last subscription in the bus is
//!   closed.
//!
//! # Outages
//!
//! If a connection is lost the bus reconnects (the pub/sub connection at
//! once, then backing off from 100 ms doubling to 1 s) and re-subscribes
//! every channel that still has subscribers; subscriptions stay open
//! throughout. Redis pub/sub is at-most-once: **messages published while a
//! connection is down are lost** — publishes that fail are dropped (and
//! logged), and messages published by others while this bus's pub/sub
//! connection is down are never seen by it. RPCs in flight during an outage
//! therefore fail by their deadline (`unavailable` or `deadline_exceeded`);
//! new RPCs work again once Redis is back (tested: within 2 s of a restart),
//! without rebuilding clients or servers. `subscribe` during an outage fails
//! after 5 s with `unavailable`. In a Sentinel failover the same holds
//! (tested: serving resumed about 3 s after the master died, with
//! `down-after-milliseconds` 1000); writes the old master had not
//! replicated are lost with it, so a queue lock taken there just before the
//! failover can be won again on the new master by another queue subscriber
//! of the same message, which then is handled twice. A cluster
//! node failing moves the bus's pub/sub and publishing connection to the
//! next node it was given (not tested here); the cluster client follows
//! slot moves and failovers for the locks.
//!
//! While the pub/sub connection is down, [`RedisBus::is_connected`] is
//! false and `publish` fails at once with `unavailable` ("redis: bus
//! disconnected", with the last connection error), so a call made during an
//! outage says so instead of waiting for an answer that cannot come.
//! Losing and regaining the connection is logged at warn level;
//! [`RedisBus::watch_connected`] follows the state and
//! [`RedisBus::reconnects`] counts the reconnections.
//!
//! # Limits
//!
//! * **Message size.** Redis disconnects a pub/sub client whose output
//!   buffer passes `client-output-buffer-limit pubsub` (32 MB hard limit by
//!   default): one message that large would disconnect *every* subscriber
//!   of its channel. The bus therefore refuses to publish a message larger
//!   than [`DEFAULT_MAX_MESSAGE_SIZE`] (8 MiB;
//!   [`RedisBus::with_max_message_size`]) with `resource_exhausted`, before
//!   anything is sent (the default retry policy does not retry it), and its
//!   reader drops larger messages published by others, counted as
//!   [`DropReason::TooLarge`](psrpc::drops::DropReason::TooLarge). Raise the
//!   Redis limit before raising this one.
//! * **Channel names** longer than [`DEFAULT_MAX_CHANNEL_LEN`] bytes (prefix
//!   included; [`RedisBus::with_max_channel_len`]) are refused with
//!   `invalid_argument` before they reach Redis
//!   ([`MessageBus::check_channel`]); a server drops a request it could only
//!   answer on such a channel (a crafted client id), counted as
//!   [`DropReason::InvalidChannel`](psrpc::drops::DropReason::InvalidChannel).
//!   Redis itself takes much longer names; the limit keeps one peer from
//!   making every server build and send huge names, and is far above what
//!   the NATS bus allows (about 4 KB), so anything that works there works
//!   here.
//!
//! # Slow consumers
//!
//! One task reads the shared pub/sub connection for every subscription of
//! the bus, and it never waits for a subscriber: a stuck subscriber loses
//! its own messages and nothing else. Each subscription buffers up to the
//! `size` it was made with and, while it is behind but still reading, up to
//! [`psrpc::bus::READER_PENDING_LIMIT`] messages in all (the default
//! pending limit of a NATS subscription), so a burst costs a subscriber
//! that keeps reading nothing. A subscriber that reads nothing for
//! [`psrpc::bus::READER_STUCK_AFTER`] while behind is stuck: every message
//! for it that does not fit its own buffer is dropped at once, until it
//! reads again. Drops are counted in [`MessageBus::drops`] (reason
//! `slow_consumer`) and logged at warn level at most once per interval with
//! the channel ([`psrpc::drops`]). A queue message that no local queue
//! subscriber can take is not locked at all (another process may take it)
//! and is counted the same way. A subscription therefore never holds more
//! than that limit, and no other subscription or call of the bus
//! is slowed. (Go's reader blocks the whole bus on a full subscriber, and
//! the messages arriving meanwhile pile up in the client.) This is the
//! policy of every psrpc bus ([`psrpc::bus::Sink`]). The reader handles the
//! messages of one connection in order, so a flood on one channel still
//! delays the others by the time the reader takes to go through it.
//! Runtime handlers ([`MessageBus::subscribe_handler`]) keep the trait's
//! default (a task reading a [`Subscription`]): calling them from the reader
//! saves a task hop but measured no faster at 64 calls in flight on two
//! cores (and slower on NATS), as the reader then does all the runtime's
//! dispatch.
//!
//! # Compression
//!
//! Every client and server reads gzip-compressed messages (Go psrpc v0.7.6
//! and later can send them) whatever the options; payloads that inflate
//! past a cap (64 MiB by default) are dropped and counted. Publishing
//! compressed is off by default; turn it on per connection:
//!
//! ```no_run
//! # async fn run() -> psrpc::Result<()> {
//! use psrpc::CompressionOptions;
//! let bus = psrpc_redis::RedisBus::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .with_compression(CompressionOptions::default().with_quality(6));
//! # let _ = bus; Ok(())
//! # }
//! ```
//!
//! Payloads of at least 1024 bytes ([`with_threshold`](psrpc::CompressionOptions::with_threshold))
//! are then gzipped, and sent compressed when that makes them smaller. In a
//! mixed fleet, roll out readers first: Go peers older than v0.7.6 drop
//! compressed messages (every peer built on this crate reads them), so
//! raise the quality at publishers only once every peer on the bus is
//! v0.7.6 or later. A queue message is locked by the hash of the bytes as
//! sent, compressed or not, so queue delivery is unaffected. The rules are
//! in [`psrpc::codec`].
//!
//! # Dead stream peers
//!
//! [`MessageBus::listeners`] is `PUBSUB NUMSUB <channel>` on the command
//! connection (prefix included): it counts every subscriber on the server,
//! Go's too, and publishes nothing. psrpc streams use it to end a stream
//! whose peer died without closing (see `psrpc::stream`, "Dead peers").
//! In a Redis Cluster the command counts only the subscribers of the node
//! asked, so the cluster bus answers that it cannot tell and its streams
//! are not watched; Sentinel-managed masters are asked like one server.
//!
//! # Security
//!
//! Every client of a Redis that can `SUBSCRIBE` and `PUBLISH` on a
//! service's channels is a full psrpc peer: it can serve the service, read
//! its calls, and answer any client's call (a forged response on the
//! client's `<service>|<client id>|RES` channel is taken as the answer).
//! Lock a shared Redis down with ACL users (Redis 7 or later): channel
//! patterns `&pattern` grant `PUBLISH` and `SUBSCRIBE` alike, so give each
//! user its subscribe channels in its root permissions and its publish
//! channels in a selector. A client user of service `Greeter`:
//!
//! ```text
//! user greeter-client on >secret resetchannels resetkeys -@all +ping +pubsub|numsub
//!   +subscribe +unsubscribe &Greeter|CLI_*|RES &Greeter|CLI_*|CLAIM &Greeter|CLI_*|STR
//!   &Greeter|STR_*|CLI|LIVE (+publish resetchannels &Greeter|SayHello|* &Greeter|Chat|*)
//! ```
//!
//! (one line in the file). The server user is the mirror image, plus
//! `+set ~*` for the queue locks. The tested files are in the
//! repository's `docs/security/` (`redis-users.acl`, with the table of
//! channels); `tests/security.rs` checks that the client user calls the
//! service and is refused `SUBSCRIBE Greeter|SayHello|REQ` and
//! `PUBLISH Greeter|CLI_other|RES` with `NOPERM`. The redis client library
//! reports a refused `SUBSCRIBE` as a success, so a server registered
//! under a user without the right hears nothing instead of failing.
//! [`with_prefix`](RedisBus::with_prefix) separates deployments that trust
//! each other; it is no protection.
//!
//! # Sharing one Redis between deployments
//!
//! [`RedisBus::with_prefix`] prepends a string to every channel name, so
//! deployments using different prefixes on one Redis never hear each other.
//! Queue lock keys are not prefixed (they are hashes of the payload, as in
//! Go). A prefixed bus only talks to peers using the same prefix; use no
//! prefix to interoperate with Go psrpc.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use psrpc::bus::{Channel, MessageBus, Subscription};
use psrpc::{Error, ErrorCode, Result};
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub use redis;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `publish` waits for room in a full publish queue.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const PUBLISH_QUEUE: usize = 65_536;
const PUBLISH_BATCH: usize = 4_096;
/// Queue-lock pipelines in flight per bus; the reader stops reading beyond.
const LOCK_BATCHES_IN_FLIGHT: usize = 64;
/// Most queue locks in one pipeline.
const LOCK_BATCH: usize = 256;
const LOCK_RETRIES: u32 = 3;

/// The largest message the bus publishes or delivers by default: well below
/// Redis' default 32 MB hard limit on a pub/sub client's output buffer.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 << 20;

/// The longest channel name (prefix included) the bus uses by default.
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 64 << 10;

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("redis: {what}: {e}"))
}

fn stopped() -> Error {
    Error::new(ErrorCode::Unavailable, "redis: bus stopped")
}

// ---------------------------------------------------------------------------
// Topology: which server a connection goes to.

/// Where the bus connects.
enum Topology {
    /// One server.
    Single(redis::Client),
    /// Nodes of a Redis Cluster: pub/sub and publishes go to any one of them
    /// (classic pub/sub is cluster-wide), the next one after a failure.
    Cluster {
        nodes: Vec<redis::Client>,
        next: AtomicUsize,
    },
    /// The master a set of sentinels names, asked again at every connection.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Topology {
    /// The client of the server to connect to now.
    async fn node(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Topology::Single(c) => Ok(c.clone()),
            Topology::Cluster { nodes, next } => {
                Ok(nodes[next.load(Ordering::Relaxed) % nodes.len()].clone())
            }
            Topology::Sentinel(s) => {
                let mut s = s.lock().await;
                within(CONNECT_TIMEOUT, s.async_get_client()).await
            }
        }
    }

    /// A connection to the current node failed: prefer another one next.
    fn failed(&self) {
        if let Topology::Cluster { next, .. } = self {
            next.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A multiplexed connection to the current node.
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = self.node().await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let r = within(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        if r.is_err() {
            self.failed();
        }
        r
    }

    /// A pub/sub connection to the current node.
    async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        let client = self.node().await?;
        let r = within(CONNECT_TIMEOUT, client.get_async_pubsub()).await;
        if r.is_err() {
            self.failed();
        }
        r
    }
}

/// `f`, or a timeout error after `t`.
async fn within<T>(
    t: Duration,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))),
    }
}

/// A multiplexed connection that reconnects (through the topology, so to
/// the current master or another cluster node) after a connection error.
struct Managed {
    topology: Arc<Topology>,
    /// The connection and its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One connection attempt at a time; the time of the last failed one.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
}

impl Managed {
    fn new(topology: Arc<Topology>) -> Self {
        Managed {
            topology,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        lock(&self.current).clone()
    }

    /// The connection, connecting if there is none (at most once per
    /// [`BACKOFF_MIN`] after a failure: in between, fails at once).
    async fn get(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some(t) = *last_failure
            && t.elapsed() < BACKOFF_MIN
        {
            return Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "reconnecting",
            )));
        }
        match self.topology.connect().await {
            Ok(c) => {
                *last_failure = None;
                let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *lock(&self.current) = Some((g, c.clone()));
                Ok((g, c))
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Forgets connection `generation` after a connection error on it.
    fn failed(&self, generation: u64) {
        let mut cur = lock(&self.current);
        if matches!(&*cur, Some((g, _)) if *g == generation) {
            *cur = None;
            self.topology.failed();
        }
    }

    /// Runs `cmd`, reconnecting once if the connection turns out dead.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut retried = false;
        loop {
            let (g, mut c) = self.get().await?;
            match cmd.query_async(&mut c).await {
                Err(e) if is_connection_error(&e) => {
                    self.failed(g);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                r => return r,
            }
        }
    }
}

impl Managed {
    /// Runs `pipe`, reconnecting once if the connection turns out dead.
    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        let mut retried = false;
        loop {
            let (g, mut c) = self.get().await?;
            match pipe.query_async(&mut c).await {
                Err(e) if is_connection_error(&e) => {
                    self.failed(g);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                r => return r,
            }
        }
    }
}

/// The connection the queue locks are taken on.
#[derive(Clone)]
enum Locks {
    Managed(Arc<Managed>),
    Cluster(ClusterConnection),
}

impl Locks {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Locks::Managed(m) => m.query(cmd).await,
            Locks::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// Takes the Go queue locks of `payloads`: for each, true if this bus
    /// won it. One pipeline on a single connection; in a cluster, where the
    /// keys live on different masters, one command each, all at once.
    async fn take(&self, payloads: &[Bytes], drops: &psrpc::drops::Drops) -> Vec<bool> {
        let cmds: Vec<redis::Cmd> = payloads
            .iter()
            .map(|p| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(queue_lock_key(p))
                    .arg(random_int())
                    .arg("EX")
                    .arg(5)
                    .arg("NX");
                cmd
            })
            .collect();
        let mut attempt = 0;
        loop {
            let r: redis::RedisResult<Vec<Option<String>>> = match self {
                Locks::Managed(m) => {
                    let mut pipe = redis::pipe();
                    for c in &cmds {
                        pipe.add_command(c.clone());
                    }
                    m.query_pipe(&pipe).await
                }
                Locks::Cluster(c) => futures::future::join_all(cmds.iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Option<String>>(&mut c).await }
                }))
                .await
                .into_iter()
                .collect(),
            };
            match r {
                Ok(won) => return won.iter().map(Option::is_some).collect(),
                // Locks are safe to ask again after a connection error.
                Err(e) if attempt < LOCK_RETRIES && is_connection_error(&e) => {
                    attempt += 1;
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
                Err(e) => {
                    drops.add(
                        psrpc::drops::DropReason::Broker,
                        payloads.len() as u64,
                        "(queue locks)",
                        &format_args!("queue lock failed: {e}"),
                    );
                    return vec![false; payloads.len()];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The bus.

/// The psrpc bus over Redis pub/sub. Clones share the connections.
///
/// See the [crate documentation](crate) for semantics.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
    prefix: Arc<str>,
    compression: psrpc::CompressionOptions,
    max_channel: usize,
}

struct Inner {
    publish_tx: mpsc::Sender<(String, Bytes)>,
    /// The command connection, for `PUBSUB NUMSUB`; `None` in a cluster,
    /// where that command only counts one node's subscribers.
    numsub: Option<Arc<Managed>>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

/// What the reader needs: the subscribers by full Redis channel name, the
/// lock connection and the drop count.
struct Shared {
    channels: Mutex<HashMap<String, Arc<Subscribers>>>,
    drops: psrpc::drops::Drops,
    locks: Locks,
    /// The largest message published or delivered.
    max_message: AtomicUsize,
    /// Whether the pub/sub connection is up.
    connected: tokio::sync::watch::Sender<bool>,
    reconnects: AtomicU64,
    /// Why the connection is down (the last error seen).
    last_error: Mutex<String>,
}

impl Shared {
    /// The pub/sub connection is down: logs it and tells the watchers.
    fn lost(&self, why: &str) {
        *lock(&self.last_error) = why.to_owned();
        if self
            .connected
            .send_if_modified(|v| std::mem::replace(v, false))
        {
            tracing::warn!(error = why, "redis bus: connection lost, reconnecting");
        }
    }

    /// The pub/sub connection is back, its channels subscribed again.
    fn restored(&self) {
        if self
            .connected
            .send_if_modified(|v| !std::mem::replace(v, true))
        {
            let n = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(reconnects = n, "redis bus: reconnected");
        }
    }
}

use psrpc::bus::{Members as Subscribers, Sink};

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

/// Runs the remover when dropped (unless taken out): undoes a subscription
/// that failed.
struct RemoveOnDrop(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl RedisBus {
    /// Connects to the Redis at `url`
    /// (`redis://[[user]:password@]host:port[/db]`, `rediss://` with the
    /// `tls` feature).
    ///
    /// Fails with an `unavailable` error if the URL is invalid, the server is
    /// unreachable or authentication fails.
    pub async fn connect(url: &str) -> Result<RedisBus> {
        let client = redis::Client::open(url).map_err(|e| unavailable("invalid url", e))?;
        Self::from_client(client).await
    }

    /// A bus over a client the caller configured (credentials, database,
    /// TLS, ...). Opens the connections and checks them with `PING`: fails
    /// with an `unavailable` error if the server is unreachable or
    /// authentication fails.
    pub async fn from_client(client: redis::Client) -> Result<RedisBus> {
        let topology = Arc::new(Topology::Single(client));
        Self::build(topology, None).await
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs (see the
    /// [crate documentation](crate#topologies)). Credentials go in the URLs.
    pub async fn connect_cluster<S: AsRef<str>>(urls: &[S]) -> Result<RedisBus> {
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let nodes = urls
            .iter()
            .map(|u| redis::Client::open(*u))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| unavailable("invalid url", e))?;
        let cluster =
            redis::cluster::ClusterClient::new(urls).map_err(|e| unavailable("invalid url", e))?;
        Self::from_cluster(nodes, cluster).await
    }

    /// A bus over a Redis Cluster: `nodes` are clients of cluster nodes for
    /// pub/sub and publishing (any node will do, the next after a failure),
    /// `cluster` the cluster client the queue locks go through. Both
    /// configured by the caller (credentials, TLS, ...).
    pub async fn from_cluster(
        nodes: Vec<redis::Client>,
        cluster: redis::cluster::ClusterClient,
    ) -> Result<RedisBus> {
        if nodes.is_empty() {
            return Err(unavailable("cluster", "no node given"));
        }
        let locks = within(CONNECT_TIMEOUT, cluster.get_async_connection())
            .await
            .map_err(|e| unavailable("cannot connect to the cluster", e))?;
        let topology = Arc::new(Topology::Cluster {
            nodes,
            next: AtomicUsize::new(0),
        });
        Self::build(topology, Some(locks)).await
    }

    /// Connects to the master named `service` by the sentinels at
    /// `sentinel_urls`, following it through failovers (see the
    /// [crate documentation](crate#topologies)). The master is reached
    /// without credentials; use [`from_sentinel`](Self::from_sentinel) to
    /// give some.
    pub async fn connect_sentinel<S: AsRef<str>>(
        sentinel_urls: &[S],
        service: &str,
    ) -> Result<RedisBus> {
        let urls: Vec<&str> = sentinel_urls.iter().map(AsRef::as_ref).collect();
        let client = redis::sentinel::SentinelClient::build(
            urls,
            service.to_owned(),
            None,
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| unavailable("invalid sentinel url", e))?;
        Self::from_sentinel(client).await
    }

    /// A bus over a sentinel client the caller configured (master
    /// credentials, TLS, ...); it must ask for the master.
    pub async fn from_sentinel(client: redis::sentinel::SentinelClient) -> Result<RedisBus> {
        let topology = Arc::new(Topology::Sentinel(tokio::sync::Mutex::new(client)));
        Self::build(topology, None).await
    }

    /// Opens the connections; `cluster` takes the locks in a cluster,
    /// otherwise they share the publishing connection (their commands then
    /// travel in the same writes).
    async fn build(
        topology: Arc<Topology>,
        cluster: Option<ClusterConnection>,
    ) -> Result<RedisBus> {
        let publisher = Arc::new(Managed::new(topology.clone()));
        let locks = match cluster {
            Some(c) => Locks::Cluster(c),
            None => Locks::Managed(publisher.clone()),
        };
        publisher
            .query::<()>(&redis::cmd("PING"))
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        locks
            .query::<()>(&redis::cmd("PING"))
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        let mut pubsub = topology
            .pubsub()
            .await
            .map_err(|e| unavailable("cannot open the pub/sub connection", e))?;
        pubsub
            .ping::<()>()
            .await
            .map_err(|e| unavailable("pub/sub PING failed", e))?;

        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            drops: psrpc::drops::Drops::default(),
            locks,
            max_message: AtomicUsize::new(DEFAULT_MAX_MESSAGE_SIZE),
            connected: tokio::sync::watch::Sender::new(true),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        });
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(writer(publish_rx, publisher.clone(), shared.clone()));
        let numsub = match &*topology {
            Topology::Cluster { .. } => None,
            _ => Some(publisher.clone()),
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        tokio::spawn(manager(topology, publisher, pubsub, cmd_rx, shared.clone()));
        Ok(RedisBus {
            inner: Arc::new(Inner {
                publish_tx,
                numsub,
                cmd_tx,
                shared,
                next_id: AtomicU64::new(1),
            }),
            prefix: Arc::from(""),
            compression: psrpc::CompressionOptions::DEFAULT,
            max_channel: DEFAULT_MAX_CHANNEL_LEN,
        })
    }

    /// Sets the largest message this bus (every handle on its connections)
    /// publishes or delivers; default [`DEFAULT_MAX_MESSAGE_SIZE`]. Keep it
    /// well below Redis' `client-output-buffer-limit pubsub` (see the
    /// [crate docs](crate#limits)).
    pub fn with_max_message_size(self, n: usize) -> Self {
        self.inner.shared.max_message.store(n, Ordering::Relaxed);
        self
    }

    /// The largest message this bus publishes or delivers.
    pub fn max_message_size(&self) -> usize {
        self.inner.shared.max_message.load(Ordering::Relaxed)
    }

    /// A handle refusing channel names (prefix included) longer than `n`
    /// bytes; default [`DEFAULT_MAX_CHANNEL_LEN`].
    pub fn with_max_channel_len(mut self, n: usize) -> Self {
        self.max_channel = n;
        self
    }

    /// Whether the pub/sub connection to Redis is up (and its channels
    /// subscribed).
    pub fn is_connected(&self) -> bool {
        *self.inner.shared.connected.borrow()
    }

    /// Follows [`is_connected`](Self::is_connected).
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shared.connected.subscribe()
    }

    /// How many times the pub/sub connection was re-established since the
    /// bus was made.
    pub fn reconnects(&self) -> u64 {
        self.inner.shared.reconnects.load(Ordering::Relaxed)
    }

    /// A handle on the same connections that prepends `prefix` to every
    /// channel name, isolating it from buses with another prefix on the same
    /// Redis (see the [crate documentation](crate#sharing-one-redis-between-deployments)).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Has no effect: the bus's reader never waits for a subscriber, so
    /// there is no timeout to set (see the
    /// [crate documentation](crate#slow-consumers)).
    #[deprecated(
        note = "the reader never waits: a subscription that stops reading is cut off (see the crate docs)"
    )]
    pub fn with_slow_consumer_timeout(self, _timeout: Duration) -> Self {
        self
    }

    /// A handle on the same connections whose clients and servers publish
    /// and read with `compression`: gzip of large payloads when publishing
    /// (off by default), and the cap on decompressed payloads when reading.
    /// See the [crate documentation](crate#compression).
    pub fn with_compression(mut self, compression: psrpc::CompressionOptions) -> Self {
        self.compression = compression;
        self
    }

    /// The channel-name prefix of this handle (empty by default).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.drops.total()
    }

    fn name(&self, channel: &Channel) -> String {
        if self.prefix.is_empty() {
            channel.legacy.clone()
        } else {
            format!("{}{}", self.prefix, channel.legacy)
        }
    }

    /// Adds `sink` to `channel`; returns what removes it, once Redis
    /// acknowledged the subscription.
    async fn add(
        &self,
        channel: &Channel,
        queue: bool,
        sink: Sink,
    ) -> Result<Box<dyn FnOnce() + Send + Sync>> {
        self.check_channel(channel)?;
        let key = self.name(channel);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self.inner.shared.lock();
            let mut subs = map.get(&key).map(|s| (**s).clone()).unwrap_or_default();
            subs.add(id, sink, queue);
            map.insert(key.clone(), Arc::new(subs));
        }
        let shared = Arc::downgrade(&self.inner.shared);
        let cmd_tx = self.inner.cmd_tx.clone();
        let closing_key = key.clone();
        // Made before subscribing so that failing below cleans up.
        let mut remove = RemoveOnDrop(Some(Box::new(move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut map = shared.lock();
            let Some(cur) = map.get(&closing_key) else {
                return;
            };
            let mut s = (**cur).clone();
            s.remove(id);
            if s.is_empty() {
                map.remove(&closing_key);
                let _ = cmd_tx.send(Command::Unsubscribe {
                    channel: closing_key,
                });
            } else {
                map.insert(closing_key, Arc::new(s));
            }
        })));
        let (reply, ack) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(Command::Subscribe {
                channel: key,
                reply,
            })
            .map_err(|_| stopped())?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ack).await {
            Ok(Ok(Ok(()))) => Ok(remove.0.take().expect("set above")),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(Error::new(
                ErrorCode::Unavailable,
                "redis: SUBSCRIBE not acknowledged in time",
            )),
        }
    }

    async fn add_chan(&self, channel: &Channel, size: usize, queue: bool) -> Result<Subscription> {
        // A burst is buffered for a subscriber that keeps reading; one that
        // stops is cut off: see the crate docs (slow consumers).
        let (sink, rx) = Sink::for_reader(size);
        let remove = self.add(channel, queue, sink).await?;
        Ok(Subscription::new(rx, remove))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Subscribers>>> {
        lock(&self.channels)
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
        self.check_channel(channel)?;
        let shared = &self.inner.shared;
        let max = shared.max_message.load(Ordering::Relaxed);
        if msg.len() > max {
            return Err(Error::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "redis: message of {} bytes is larger than the bus's maximum of {max} bytes",
                    msg.len()
                ),
            ));
        }
        if !*shared.connected.borrow() {
            let why = lock(&shared.last_error).clone();
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!("redis: bus disconnected (reconnecting): message not sent: {why}"),
            ));
        }
        let item = (self.name(channel), msg);
        match self.inner.publish_tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(stopped()),
            Err(mpsc::error::TrySendError::Full(item)) => {
                match tokio::time::timeout(PUBLISH_WAIT, self.inner.publish_tx.send(item)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(stopped()),
                    Err(_) => Err(Error::new(
                        ErrorCode::Unavailable,
                        "redis: publish queue full (is Redis reachable?)",
                    )),
                }
            }
        }
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, false).await
    }

    fn drops(&self) -> &psrpc::drops::Drops {
        &self.inner.shared.drops
    }

    fn compression(&self) -> &psrpc::CompressionOptions {
        &self.compression
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        let len = self.prefix.len() + channel.legacy.len();
        if len > self.max_channel {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "redis: channel name of {len} bytes is longer than the bus's limit of {} bytes: {}",
                    self.max_channel,
                    psrpc::drops::Truncated(&channel.legacy)
                ),
            ));
        }
        Ok(())
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, true).await
    }

    /// `PUBSUB NUMSUB` of the (prefixed) channel: every subscriber on the
    /// server, Go's included; nothing is published. `None` in a Redis
    /// Cluster, where the command counts one node's subscribers only.
    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        let Some(conn) = &self.inner.numsub else {
            return Ok(None);
        };
        let name = self.name(channel);
        let counts: Vec<(String, usize)> = conn
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(&name))
            .await
            .map_err(|e| unavailable("PUBSUB NUMSUB failed", e))?;
        Ok(Some(counts.first().map_or(0, |(_, n)| *n)))
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

/// Sends queued publishes, everything queued at once as one pipeline.
async fn writer(mut rx: mpsc::Receiver<(String, Bytes)>, conn: Arc<Managed>, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, msg) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&msg[..]).ignore();
        }
        let sent = match conn.get().await {
            Ok((g, mut c)) => {
                let r = pipe.query_async::<()>(&mut c).await;
                if let Err(e) = &r
                    && is_connection_error(e)
                {
                    conn.failed(g);
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            shared.drops.add(
                psrpc::drops::DropReason::Broker,
                batch.len() as u64,
                &batch[0].0,
                &format_args!("publish failed: {e}"),
            );
        }
        batch.clear();
    }
}

/// Owns the pub/sub connection: applies subscribe commands, reconnects and
/// re-subscribes after a loss.
async fn manager(
    topology: Arc<Topology>,
    publisher: Arc<Managed>,
    initial: PubSub,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
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
                match topology.pubsub().await {
                    Ok(p) => {
                        // Make the other connections notice the outage now
                        // rather than with the next publish or lock.
                        let _ = publisher.query::<()>(&redis::cmd("PING")).await;
                        let _ = shared.locks.query::<()>(&redis::cmd("PING")).await;
                        p
                    }
                    Err(e) => {
                        shared.lost(&e.to_string());
                        tracing::debug!(error = %e, "redis bus: pub/sub reconnect failed");
                        continue;
                    }
                }
            }
        };
        let (sink, stream) = pubsub.split();
        let channels = shared.keys();
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
                    shared.lost("re-subscribing failed");
                    topology.failed();
                    continue;
                }
            }
        }
        shared.restored();
        backoff = Duration::ZERO;
        let mut reader = tokio::spawn(read(stream, shared.clone()));
        if !serve(&mut cmds, sink, &mut reader, &shared).await {
            reader.abort();
            return;
        }
        reader.abort();
        topology.failed();
        shared.lost("pub/sub connection lost");
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
    shared: &Shared,
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
            let want = shared.contains(channel);
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

/// Queue messages waiting for their locks: resolves to those this bus won,
/// with their channels, in order.
type LockFuture = Pin<Box<dyn Future<Output = Vec<(Arc<str>, Bytes)>> + Send>>;

/// Reads the pub/sub connection and dispatches, until it is lost.
///
/// Fan-out subscribers get each message at once. Queue messages first take
/// their locks: the locks of the messages read together go as one
/// pipeline, several pipelines are in flight at once (up to
/// [`LOCK_BATCHES_IN_FLIGHT`]), and won messages are delivered in arrival
/// order.
async fn read(mut stream: PubSubStream, shared: Arc<Shared>) {
    let mut locks: FuturesOrdered<LockFuture> = FuturesOrdered::new();
    let mut open = true;
    let mut waiting: Vec<(Arc<str>, Bytes)> = Vec::new();
    while open || !locks.is_empty() {
        tokio::select! {
            biased;
            Some(won) = locks.next(), if !locks.is_empty() => {
                for (channel, msg) in won {
                    deliver_queue(&shared, &channel, msg);
                }
            }
            msg = stream.next(), if open && locks.len() < LOCK_BATCHES_IN_FLIGHT => {
                let mut next = msg;
                loop {
                    let Some(msg) = next else {
                        // Lost: deliver what is won already, then end.
                        open = false;
                        break;
                    };
                    let channel = msg.get_channel_name();
                    let (len, max) = (msg.get_payload_bytes().len(), shared.max_message.load(Ordering::Relaxed));
                    if len > max {
                        let detail = format_args!("{len} bytes, over the bus's maximum of {max}");
                        shared.drops.record(psrpc::drops::DropReason::TooLarge, channel, &detail);
                    } else if let Some(targets) = shared.get(channel) {
                        // A lock only for a message a member can take:
                        // stuck members neither cost a round trip nor win
                        // messages that another process could serve.
                        let queue = targets.has_queue() && targets.queue_can_take();
                        if targets.has_queue() && !queue {
                            shared.drops.record(
                                psrpc::drops::DropReason::SlowConsumer,
                                channel,
                                &"every queue subscriber full, lock not taken",
                            );
                        }
                        if queue || targets.has_fanout() {
                            let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                            targets.deliver_fanout(&payload, &shared.drops, channel);
                            if queue {
                                waiting.push((Arc::from(channel), payload));
                            }
                        }
                    }
                    if waiting.len() >= LOCK_BATCH {
                        break;
                    }
                    // More already read? Then their locks join this batch.
                    match stream.next().now_or_never() {
                        Some(m) => next = m,
                        None => break,
                    }
                }
                if !waiting.is_empty() {
                    let batch = std::mem::take(&mut waiting);
                    let shared = shared.clone();
                    locks.push_back(Box::pin(async move {
                        let payloads: Vec<Bytes> = batch.iter().map(|(_, p)| p.clone()).collect();
                        let won = shared.locks.take(&payloads, &shared.drops).await;
                        batch
                            .into_iter()
                            .zip(won)
                            .filter_map(|(m, won)| won.then_some(m))
                            .collect()
                    }));
                }
            }
        }
    }
}

/// Delivers a won queue message to one of the channel's queue subscribers
/// (round-robin, without waiting, see [`psrpc::bus::Sink`]).
fn deliver_queue(shared: &Shared, channel: &str, msg: Bytes) {
    let gone = match shared.get(channel) {
        Some(targets) => targets.deliver_queue(msg, &shared.drops, channel).is_err(),
        None => true,
    };
    if gone {
        shared.drops.record(
            psrpc::drops::DropReason::NoRoute,
            channel,
            &"queue subscribers closed after the lock was won",
        );
    }
}
