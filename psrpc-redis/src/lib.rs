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
//! # Building, errors and closing
//!
//! [`RedisBus::builder`] takes every option (prefix, message size and
//! channel length limits, compression) before it connects; a bus's options
//! never change afterwards. [`RedisBus::connect`] is the builder with the
//! defaults. URLs are read by redis' own parser, credentials included.
//!
//! Building fails with an [`Error`] that says what failed (an invalid URL,
//! the connection or authentication, the pub/sub connection) and keeps the
//! [`redis::RedisError`] as its source; it converts into a [`psrpc::Error`]
//! (`?` in a function returning [`psrpc::Result`]) that keeps it as its
//! source in turn. Errors of a running bus are [`psrpc::Error`]s with the
//! same chain: a lost connection is `unavailable`.
//!
//! [`RedisBus::close`] unsubscribes every channel, ends the subscriptions,
//! sends what is queued for publishing and stops the bus's tasks; every
//! later call on the bus fails with `unavailable` ("bus closed"). Dropping
//! every handle and subscription of a bus stops it too, without waiting for
//! its queue.
//!
//! # Layers
//!
//! [`RedisBus`] is psrpc's generic [`Bus`](psrpc::bus::Bus) over a
//! [`RedisTransport`]: the generic bus keeps the subscribers of each
//! channel, hands them messages (fan-out, one queue member, the
//! slow-consumer policy), checks sizes, counts drops and carries the
//! compression options, as for every broker. The transport keeps what is
//! particular to Redis: the connections and topologies, one `SUBSCRIBE` per
//! channel and the reader of the pub/sub connection, the queue lock taken
//! before a queue message is delivered, `PUBSUB NUMSUB`, and the limits.
//!
//! # Topologies
//!
//! | topology | constructor | tested here |
//! |---|---|---|
//! | one server (password, ACL user, database, TLS through the URL or a configured [`redis::Client`]) | [`RedisBusBuilder::connect`], [`RedisBusBuilder::build_from_client`] | yes (TLS: not tested) |
//! | Redis Cluster | [`RedisBusBuilder::connect_cluster`], [`RedisBusBuilder::build_from_cluster`] | yes, 3 masters on loopback, clients and servers on different nodes |
//! | Sentinel-managed master | [`RedisBusBuilder::connect_sentinel`], [`RedisBusBuilder::build_from_sentinel`] | yes, master failover on loopback |
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
//!   (preceded by the optional [prefix](RedisBusBuilder::prefix)); the payload
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
//!   [`RedisBusBuilder::max_message_size`]) with `resource_exhausted`, before
//!   anything is sent (the default retry policy does not retry it), and its
//!   reader drops larger messages published by others, counted as
//!   [`DropReason::TooLarge`](psrpc::drops::DropReason::TooLarge). Raise the
//!   Redis limit before raising this one.
//! * **Channel names** longer than [`DEFAULT_MAX_CHANNEL_LEN`] bytes (prefix
//!   included; [`RedisBusBuilder::max_channel_len`]) are refused with
//!   `invalid_argument` before they reach Redis
//!   ([`MessageBus::check_channel`](psrpc::MessageBus::check_channel)); a server drops a request it could only
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
//! reads again. Drops are counted in [`MessageBus::drops`](psrpc::MessageBus::drops) (reason
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
//! Runtime handlers ([`MessageBus::subscribe_handler`](psrpc::MessageBus::subscribe_handler)) keep the trait's
//! default (a task reading a [`RawSubscription`](psrpc::bus::RawSubscription)): calling them from the reader
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
//! let bus = psrpc_redis::RedisBus::builder()
//!     .compression(CompressionOptions::default().with_quality(6))
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
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
//! [`MessageBus::listeners`](psrpc::MessageBus::listeners) is `PUBSUB NUMSUB <channel>` on the command
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
//! [`prefix`](RedisBusBuilder::prefix) separates deployments that trust
//! each other; it is no protection.
//!
//! # Sharing one Redis between deployments
//!
//! [`RedisBusBuilder::prefix`] prepends a string to every channel name, so
//! deployments using different prefixes on one Redis never hear each other.
//! Queue lock keys are not prefixed (they are hashes of the payload, as in
//! Go). A prefixed bus only talks to peers using the same prefix; use no
//! prefix to interoperate with Go psrpc.

mod builder;
mod bus;
mod error;
mod locks;
mod publish;
mod pubsub;
mod reader;
mod shared;
mod topology;
mod transport;

pub use builder::{DEFAULT_MAX_CHANNEL_LEN, DEFAULT_MAX_MESSAGE_SIZE, RedisBusBuilder};
pub use bus::RedisBus;
pub use error::Error;
pub use locks::queue_lock_key;
pub use redis;
pub use transport::RedisTransport;
