//! The NATS bus of psrpc, wire-compatible with Go psrpc (see the
//! project's docs/PROTOCOL.md, "NATS specifics").
//!
//! ```no_run
//! # async fn demo() -> psrpc::Result<()> {
//! use std::sync::Arc;
//! use psrpc::{ClientOptions, RpcClient, RpcServer, ServerOptions};
//! use psrpc_nats::NatsBus;
//!
//! let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
//! let server = RpcServer::new(Arc::new(bus.clone()), "MyService", ServerOptions::default());
//! let client = RpcClient::new(Arc::new(bus), "MyService", ClientOptions::default()).await?;
//! # let _ = (server, client);
//! # Ok(())
//! # }
//! ```
//!
//! # Wire
//!
//! * A message on channel `c` is published to the subject `c.server` (with
//!   the optional [prefix](NatsBus::with_prefix) in front), without headers
//!   or reply subject. Its payload is the `Msg` envelope the runtime hands
//!   over with `Msg.channel` (field 3) set to `c.local` when that is not empty
//!   ([`psrpc::wire::append_channel`]): exactly the bytes Go psrpc publishes.
//! * A subscription whose `c.local` is empty subscribes the subject directly:
//!   `SUB <subject>` for fan-out, `SUB <subject> bus` (queue group `bus`) for
//!   queue subscriptions.
//! * A subscription whose `c.local` is non-empty goes through a *router*:
//!   one NATS subscription per (subject, queue-or-not) per bus instance
//!   (clones share them), shared by every local subscriber of that subject.
//!   Each message is handed by its field 3 to the local subscribers
//!   registered under exactly that name. The NATS subscription is removed
//!   when the last local subscriber of the router goes.
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
//! let bus = psrpc_nats::NatsBus::connect("nats://127.0.0.1:4222")
//!     .await?
//!     .with_compression(CompressionOptions::default().with_quality(6));
//! # let _ = bus; Ok(())
//! # }
//! ```
//!
//! Payloads of at least 1024 bytes ([`with_threshold`](psrpc::CompressionOptions::with_threshold))
//! are then gzipped, and sent compressed when that makes them smaller. Only
//! the payload is compressed: `Msg.channel`, which routes messages here,
//! stays readable. In a mixed fleet, roll out readers first: Go peers older
//! than v0.7.6 drop compressed messages (every peer built on this crate
//! reads them), so raise the quality at publishers only once every peer on
//! the bus is v0.7.6 or later. The rules are in [`psrpc::codec`].
//!
//! # Deliberate choices
//!
//! * **No route**: NATS picks one process of queue group `bus`
//!   among *all* queue subscribers of a subject such as `SRV.<S>.Q`,
//!   whatever methods they serve. Go drops a queue message that reaches a
//!   process with no local subscriber of its name, so the caller gets
//!   `unavailable`. This bus instead *hands it back*: it republishes the
//!   same bytes on the same subject (logged at debug level), so NATS picks a
//!   member again. Each bus hands a message back at most once (it remembers
//!   the messages it handed back for 5 s), so a message is never
//!   republished more times in total than its group has members, and only
//!   a psrpc request is handed back (someone waits for its answer): junk,
//!   and queue-subscription messages of a kind no member takes, are dropped
//!   and counted at once. A message can still be lost when it reaches a bus
//!   that has handed it back already; the caller then sees `unavailable`,
//!   as with Go. The message format is untouched and Go peers handle a
//!   republished message as any other; the only difference on the wire is
//!   the extra `PUB` in this failure case. `with_queue_hand_back(false)` is
//!   Go's drop ([`NatsBus::with_queue_hand_back`]). Fan-out routers drop
//!   unrouted messages (trace level): every subscriber of the subject gets
//!   them anyway.
//! * **Several local queue subscribers of one name** in one bus instance:
//!   each message goes to one of them, in turn (Go gives it to each). This
//!   keeps the [`MessageBus`] contract: one queue member in the whole system
//!   gets each message.
//! * Go refuses to open a queue and a fan-out router on one subject in one
//!   bus instance ("subscription type mismatch"); this bus keeps them apart
//!   and allows it.
//! * **Subscriptions are in effect when `subscribe` returns**: after the
//!   `SUB`, the bus publishes a sequence number to a private inbox of its
//!   connection (`_INBOX.<id>`, subscribed once per bus) and waits for it to
//!   come back; the server handles one connection's operations in order, so
//!   by then it has the `SUB`, and a message published afterwards by any
//!   connection to the same server is delivered (Go subscribes without
//!   waiting, so its tests sleep). The wait is bounded by 5 s (then an
//!   `unavailable` error). On the wire this adds one small `PUB` to that
//!   inbox per subscription. In a cluster, other nodes learn of the
//!   subscription over their routes a moment later (route propagation, well
//!   under a millisecond on loopback).
//! * **Closing a queue subscription** unsubscribes and hands the messages
//!   async-nats had already received for it back to the group (the same
//!   republish as for "no route"), instead of dropping them. Messages the
//!   server routed to it in the last round trip before the `UNSUB` arrived
//!   are lost, as with any NATS client.
//! * **Runtime handlers** ([`MessageBus::subscribe_handler`]) keep the
//!   trait's default (a task reading a [`Subscription`]): calling them from
//!   the task that reads the NATS subscription saves a task hop and a little
//!   sequential latency, but measured about 30% fewer calls per second at
//!   64 in flight on two cores (the reader becomes the serial bottleneck).
//! * **Slow consumers**: the task reading a NATS subscription never waits
//!   for a subscriber, so a stuck subscriber loses its own messages and
//!   nothing else (the policy of every psrpc bus, [`psrpc::bus::Sink`]):
//!   each subscription buffers up to the `size` it was made with and, while
//!   it is behind but still reading, up to
//!   [`psrpc::bus::READER_PENDING_LIMIT`] messages in all, so a burst costs
//!   a subscriber that keeps reading nothing; one that reads nothing for
//!   [`psrpc::bus::READER_STUCK_AFTER`] while behind is stuck, and what does
//!   not fit its own buffer is dropped for it at once until it reads again.
//!   Below that, async-nats buffers up to 65 536 messages per NATS
//!   subscription (its `subscription_capacity`), which the bus's reader
//!   drains without waiting; should that buffer still overflow (a starved
//!   process), async-nats drops and reports it through its event callback,
//!   which [`NatsBus::connect`] and [`NatsBus::connect_with_options`]
//!   install to count those drops too (reason `broker`; this replaces an
//!   event callback set in the options given; a bus made by
//!   [`NatsBus::from_client`] cannot count them). Every drop is counted in
//!   [`MessageBus::drops`] and logged at warn level at most once per
//!   interval with its subject ([`psrpc::drops`]).
//! * **Malformed bytes** on a routed subject (field 3 unreadable) are dropped
//!   and counted. Direct subscriptions pass bytes on as they are; the
//!   runtime rejects bad envelopes.
//!
//! # Security
//!
//! Every connection that may publish and subscribe on a service's subjects
//! is a full psrpc peer: it can serve the service (subscribe
//! `SRV.<service>...`), read its calls, and answer any client's call (a
//! forged response on `CLI.<service>.<client id>.RES` is taken as the
//! answer). Lock a shared nats-server down with per-user subject
//! permissions. A client user of service `Greeter` that may call it but not
//! serve it:
//!
//! ```text
//! { user: greeter-client, password: secret, permissions: {
//!     publish:   { allow: ["SRV.Greeter", "SRV.Greeter.>", "PSRPC_LIVE.Greeter.*.SRV", "_INBOX.>"] }
//!     subscribe: { allow: ["CLI.Greeter.*.RES", "CLI.Greeter.*.CLAIM", "CLI.Greeter.*.STR",
//!                          "PSRPC_LIVE.Greeter.*.CLI", "_INBOX.>"] } } }
//! ```
//!
//! The server user is the mirror image (and may publish on
//! `SRV.Greeter.>` to hand queue requests back). The tested file is the
//! repository's `docs/security/nats-server.conf` (with the table of
//! subjects); `tests/security.rs` checks that the client user calls the
//! service and that nats-server refuses its subscription to
//! `SRV.Greeter.Q` and its publish on `CLI.Greeter.CLI_other.RES`. The
//! server refuses a subscription asynchronously (a permission violation
//! on the connection), so a server registered under a user without the
//! right hears nothing instead of failing.
//! [`with_prefix`](NatsBus::with_prefix) separates deployments that trust
//! each other; it is no protection.
//!
//! # Dead stream peers
//!
//! Core NATS cannot tell who subscribes a subject without publishing to
//! it (the server's subscription lists are for the system account only),
//! so [`MessageBus::listeners`] answers only for the presence subjects of
//! psrpc streams (`PSRPC_LIVE.<service>.<stream id>.CLI|SRV`, subscribed
//! by the Rust ends of a stream and by nothing else) and `None` for every
//! other subject: it sends a request with an empty payload there, and
//! "no responders" means nobody listens (this needs headers, the default
//! since nats-server 2.2). Nothing is ever sent to a psrpc subject, so Go
//! peers hear nothing new; a Go peer's death is not noticed on this bus.
//! A user that runs psrpc streams needs publish and subscribe permission
//! on `PSRPC_LIVE.>` and subscribe permission on its inbox (`_INBOX.>`)
//! for the "no responders" answer. See `psrpc::stream`, "Dead peers".
//!
//! # Outages and topologies
//!
//! Reconnection is left to async-nats: it reconnects for ever (backing off
//! up to 4 s between attempts), replays every subscription (queue groups
//! included) and buffers publishes made meanwhile; a publish waits at most
//! 1 s for room in that buffer, then fails with `unavailable`. Core NATS is
//! at-most-once: messages published while a connection is down are lost, so
//! calls in flight during an outage fail by their deadline (`unavailable` or
//! `deadline_exceeded`); new calls work again once the server is back
//! (tested: within 2 s of a restart), without rebuilding clients or servers.
//! Construction itself fails fast: [`NatsBus::connect`] returns an
//! `unavailable` error when the server is unreachable or refuses the
//! credentials.
//!
//! While the connection is down, [`NatsBus::is_connected`] is false and
//! `publish` fails at once with `unavailable` ("nats: bus disconnected"), so
//! a call made during an outage says so instead of waiting for an answer
//! that cannot come. Losing and regaining the connection is logged at warn
//! level; [`NatsBus::watch_connected`] follows the state and
//! [`NatsBus::reconnects`] counts the reconnections.
//!
//! Tested topologies: one server, and a 3-node cluster (routes) on loopback
//! with the clients and servers of each test on different nodes (the whole
//! conformance suite). Several server URLs, comma-separated
//! (`nats://a:4222,nats://b:4222`) or as a list
//! ([`NatsBus::connect_urls`]), let async-nats fail over between nodes
//! (tested: the node a server and a client were on is killed, calls go on
//! through the other). TLS, tokens and credentials files go through
//! [`NatsBus::connect_with_options`] or [`NatsBus::from_client`] (not tested
//! here).
//!
//! # Limits
//!
//! * **Subject length.** nats-server closes a connection that sends a
//!   protocol line longer than its `max_control_line` (4096 bytes by
//!   default), and async-nats then reconnects and sends the same line again.
//!   Subjects contain topics and client ids, and sanitising turns every
//!   character outside `[0-9A-Za-z_]` into 6 or 10 bytes, so a few hundred
//!   characters of a room name are enough. Every subject is therefore
//!   checked before it reaches the connection
//!   ([`MessageBus::check_channel`]): at most [`DEFAULT_MAX_SUBJECT_LEN`]
//!   bytes (the control line less room for the rest of a `PUB` or `SUB`
//!   line, see [`NatsBus::with_max_control_line`]), no empty token, no
//!   wildcard token, no whitespace. A call or registration on a subject
//!   that fails the check fails at once with `invalid_argument`; a server
//!   drops a request it could only answer on such a subject (a crafted
//!   client id), counting it as `InvalidChannel` ([`psrpc::drops::DropReason`]).
//! * **Message size.** A message larger than the server's `max_payload`
//!   (from its `INFO`, 1 MiB by default; [`NatsBus::max_message_size`]) is
//!   refused before it is sent, with `resource_exhausted`, which the
//!   default retry policy does not retry. The server never delivers larger
//!   messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use psrpc::bus::{Channel, Members, MessageBus, Offer, Sink, Subscription};
use psrpc::drops::{DropReason, Truncated};
use psrpc::{CancellationToken, Error, ErrorCode, Result};
use std::future::Future;

pub use async_nats;

/// The queue group of every queue subscription (Go psrpc's `bus`).
pub const QUEUE_GROUP: &str = "bus";

/// Unused: the bus's readers never wait for a subscriber (see
/// [Slow consumers](crate#deliberate-choices)).
#[deprecated(
    note = "the readers never wait: a subscription that stops reading is cut off (see the crate docs)"
)]
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_millis(100);

/// nats-server's default `max_control_line`: the longest protocol line
/// (`PUB <subject> <size>`, `SUB <subject> <queue> <sid>`) it accepts before
/// closing the connection.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// What a `PUB` or `SUB` line needs besides its subject (operation, queue
/// group, sizes, ids, separators), rounded up.
const CONTROL_LINE_OVERHEAD: usize = 64;

/// The longest subject (prefix included) the bus uses by default.
pub const DEFAULT_MAX_SUBJECT_LEN: usize = DEFAULT_MAX_CONTROL_LINE - CONTROL_LINE_OVERHEAD;

/// How often the connection state is looked at for the warn log and
/// [`NatsBus::watch_connected`].
const STATE_POLL: Duration = Duration::from_millis(100);

/// How long a handed-back message is remembered.
const BOUNCE_MEMORY: Duration = Duration::from_secs(5);

/// The most handed-back messages remembered at once; past that, a message
/// with no route is dropped rather than handed back.
const BOUNCE_LIMIT: usize = 65_536;

/// A psrpc [`MessageBus`] over NATS. Clones share the connection and the
/// routers.
#[derive(Clone)]
pub struct NatsBus {
    client: Client,
    prefix: Arc<str>,
    state: Arc<State>,
    compression: psrpc::CompressionOptions,
    conn: Arc<Conn>,
    max_subject: usize,
    max_message: Option<usize>,
}

/// What is known of the connection (shared by clones; the task that
/// watches it ends when the last clone goes).
struct Conn {
    client: Client,
    connected: tokio::sync::watch::Sender<bool>,
    /// `Statistics::connects` when the bus was made.
    connects_at_start: u64,
}

impl Conn {
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Follows the connection state: logs losing and regaining it at warn
    /// level and publishes it to the watchers.
    async fn watch(conn: std::sync::Weak<Conn>) {
        let mut seen_connects = match conn.upgrade() {
            Some(c) => c.connects(),
            None => return,
        };
        loop {
            tokio::time::sleep(STATE_POLL).await;
            let Some(c) = conn.upgrade() else { return };
            let up = c.client.connection_state() == async_nats::connection::State::Connected;
            let connects = c.connects();
            let was_up = *c.connected.borrow();
            if was_up && !up {
                tracing::warn!("nats bus: connection lost, reconnecting");
            } else if up && (!was_up || connects != seen_connects) {
                let info = c.client.server_info();
                tracing::warn!(
                    server = %format_args!("{}:{}", info.host, info.port),
                    reconnects = connects.saturating_sub(c.connects_at_start),
                    "nats bus: reconnected"
                );
            }
            seen_connects = connects;
            c.connected
                .send_if_modified(|v| std::mem::replace(v, up) != up);
        }
    }
}

struct State {
    /// Flushed when the last handle goes (see `Drop for State`).
    client: Client,
    /// Serializes router creation (a NATS subscribe is awaited meanwhile).
    create: tokio::sync::Mutex<()>,
    routers: Mutex<HashMap<(String, bool), Arc<Router>>>,
    next_id: AtomicU64,
    /// Shared by every state of one connection (see `fresh_state`), and
    /// with the connection's event callback (async-nats' own drops).
    drops: Arc<psrpc::drops::Drops>,
    hand_back: bool,
    /// The queue messages handed back lately (by hash), and when.
    bounces: Mutex<HashMap<u64, std::time::Instant>>,
    /// The round-trip barrier (made on first use, see [`Barrier`]).
    barrier: tokio::sync::OnceCell<Barrier>,
}

/// Proves that the server has processed everything this connection sent so
/// far: a message published to a private inbox this connection subscribes
/// comes back only after the server went through every earlier operation of
/// the connection (a NATS server handles one connection's operations in
/// order). async-nats' `flush` only writes the socket and cannot tell.
struct Barrier {
    subject: String,
    next: AtomicU64,
    /// The highest sequence number that came back.
    seen: tokio::sync::watch::Receiver<u64>,
}

/// How long `publish` waits for room in async-nats' full command queue.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// How long a subscription waits for the server to confirm it.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for State {
    /// async-nats closes a connection whose last handle is dropped without
    /// writing what is still buffered: flush first, so that a publish made
    /// just before dropping the bus is not lost.
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client.flush().await;
            });
        }
    }
}

struct Router {
    subject: String,
    queue: bool,
    routes: RwLock<HashMap<String, Arc<Members>>>,
    nats: Slot,
    stop: CancellationToken,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("prefix", &&*self.prefix)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// How long a presence probe waits for "no responders" (see
/// [`MessageBus::listeners`]); silence past it means someone listens.
const PRESENCE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("nats: {what}: {e}"))
}

impl NatsBus {
    /// Connects to the NATS server(s) at `url` (for example
    /// `nats://user:pass@127.0.0.1:4222`; several comma-separated URLs are
    /// allowed). Fails at once with an `unavailable` error when no server can
    /// be reached or the credentials are refused.
    pub async fn connect(url: &str) -> Result<NatsBus> {
        Self::connect_with_options(url, ConnectOptions::new()).await
    }

    /// Connects to any of the NATS servers at `urls` (each as accepted by
    /// [`connect`](Self::connect)); async-nats fails over between them.
    pub async fn connect_urls<S: AsRef<str>>(urls: &[S]) -> Result<NatsBus> {
        Self::connect_addrs(
            parse_urls(urls.iter().map(AsRef::as_ref))?,
            ConnectOptions::new(),
        )
        .await
    }

    /// As [`connect`](Self::connect), with async-nats options (credentials,
    /// TLS, name, ...). `url` may hold several comma-separated URLs. Setting
    /// `retry_on_initial_connect` makes construction wait for the server
    /// instead of failing.
    pub async fn connect_with_options(url: &str, options: ConnectOptions) -> Result<NatsBus> {
        Self::connect_addrs(parse_urls(url.split(','))?, options).await
    }

    /// Connects to any of `addrs` with `options`. Credentials in the
    /// addresses (`user:password@` or `token@`) are moved into the options:
    /// async-nats does not send the credentials of a URL when the server
    /// asks for them.
    pub async fn connect_addrs(addrs: Vec<ServerAddr>, options: ConnectOptions) -> Result<NatsBus> {
        let mut options = options;
        let mut creds: Option<(String, Option<String>)> = None;
        let mut plain = Vec::with_capacity(addrs.len());
        for a in addrs {
            let mut url = a.into_inner();
            if !url.username().is_empty() {
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                creds.get_or_insert_with(|| (decode(url.username()), url.password().map(decode)));
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            plain.push(ServerAddr::from_url(url).map_err(|e| unavailable("invalid url", e))?);
        }
        let shown = plain
            .iter()
            .map(ServerAddr::as_url_str)
            .collect::<Vec<_>>()
            .join(",");
        if let Some((user, pass)) = creds {
            options = match pass {
                Some(pass) => options.user_and_password(user, pass),
                None => options.token(user),
            };
        }
        let drops = Arc::new(psrpc::drops::Drops::default());
        let client = count_library_drops(options, drops.clone())
            .connect(plain)
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {shown}"), e))?;
        Ok(Self::with_drops(client, drops))
    }

    /// A bus over an existing async-nats client. async-nats' own drops
    /// (slow consumers) are counted only on a client made by
    /// [`connect`](Self::connect) or
    /// [`connect_with_options`](Self::connect_with_options), which install
    /// an event callback (see the [crate documentation](crate)).
    pub fn from_client(client: Client) -> NatsBus {
        Self::with_drops(client, Arc::new(psrpc::drops::Drops::default()))
    }

    fn with_drops(client: Client, drops: Arc<psrpc::drops::Drops>) -> NatsBus {
        let up = client.connection_state() == async_nats::connection::State::Connected;
        let conn = Arc::new(Conn {
            client: client.clone(),
            connected: tokio::sync::watch::Sender::new(up),
            connects_at_start: client.statistics().connects.load(Ordering::Relaxed),
        });
        // Outside a runtime only the warn log and the watch go without.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(Conn::watch(Arc::downgrade(&conn)));
        }
        NatsBus {
            client: client.clone(),
            prefix: Arc::from(""),
            conn,
            max_subject: DEFAULT_MAX_SUBJECT_LEN,
            max_message: None,
            state: Arc::new(State {
                client: client.clone(),
                create: tokio::sync::Mutex::new(()),
                routers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                drops,
                hand_back: true,
                bounces: Mutex::new(HashMap::new()),
                barrier: tokio::sync::OnceCell::new(),
            }),
            compression: psrpc::CompressionOptions::DEFAULT,
        }
    }

    /// This bus with its clients and servers publishing and reading with
    /// `compression`: gzip of large payloads when publishing (off by
    /// default), and the cap on decompressed payloads when reading. Keeps
    /// the routers and everything else. See the
    /// [crate documentation](crate#compression).
    pub fn with_compression(mut self, compression: psrpc::CompressionOptions) -> NatsBus {
        self.compression = compression;
        self
    }

    /// This bus with every subject prefixed: `<prefix>.SRV.<S>...` and
    /// `<prefix>.CLI.<S>...`, so that several deployments can share one NATS
    /// without hearing each other. Peers (Go or Rust) must use the same
    /// prefix to talk; an empty prefix is the Go wire. The prefix must be a
    /// valid subject (dot-separated tokens, no spaces or wildcards).
    /// Subscriptions already made keep their subjects.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> NatsBus {
        let p: String = prefix.into();
        self.prefix = Arc::from(p.trim_end_matches('.'));
        self
    }

    /// Has no effect: the bus's readers never wait for a subscriber, so
    /// there is no timeout to set (see the
    /// [crate documentation](crate#deliberate-choices)).
    #[deprecated(
        note = "the readers never wait: a subscription that stops reading is cut off (see the crate docs)"
    )]
    pub fn with_slow_consumer_timeout(self, _timeout: Duration) -> NatsBus {
        self
    }

    /// Whether this bus hands a queue request it has no local subscriber
    /// for back to its queue group (default true; false drops it, as Go
    /// does). See the [crate documentation](crate#deliberate-choices).
    /// Resets the routers, so call it before subscribing.
    pub fn with_queue_hand_back(mut self, on: bool) -> NatsBus {
        self.state = self.fresh_state(on);
        self
    }

    /// New bus state with these settings: no routers yet, the drop count kept.
    fn fresh_state(&self, hand_back: bool) -> Arc<State> {
        Arc::new(State {
            client: self.client.clone(),
            create: tokio::sync::Mutex::new(()),
            routers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            drops: self.state.drops.clone(),
            hand_back,
            bounces: Mutex::new(HashMap::new()),
            barrier: tokio::sync::OnceCell::new(),
        })
    }

    /// This bus for a nats-server whose `max_control_line` is `n` bytes
    /// (default [`DEFAULT_MAX_CONTROL_LINE`]): subjects longer than `n` less
    /// room for the rest of a protocol line are refused (see the
    /// [crate docs](crate#limits)).
    pub fn with_max_control_line(mut self, n: usize) -> NatsBus {
        self.max_subject = n.saturating_sub(CONTROL_LINE_OVERHEAD);
        self
    }

    /// This bus refusing to send messages larger than `n` bytes (never more
    /// than the server's `max_payload`, which also bounds what it receives).
    pub fn with_max_message_size(mut self, n: usize) -> NatsBus {
        self.max_message = Some(n);
        self
    }

    /// The largest message this bus sends: the server's `max_payload` (as
    /// announced in its `INFO`, updated at every reconnection), or less if
    /// set with [`with_max_message_size`](Self::with_max_message_size).
    pub fn max_message_size(&self) -> usize {
        let server = self.client.max_payload();
        self.max_message.map_or(server, |m| m.min(server))
    }

    /// The longest subject (prefix included) this bus uses.
    pub fn max_subject_len(&self) -> usize {
        self.max_subject
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Follows [`is_connected`](Self::is_connected) (looked at every 100 ms).
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.conn.connected.subscribe()
    }

    /// How many times the connection was re-established since the bus was
    /// made.
    pub fn reconnects(&self) -> u64 {
        self.conn
            .connects()
            .saturating_sub(self.conn.connects_at_start)
    }

    /// The subject prefix (empty for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The async-nats client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.state.drops.total()
    }

    /// The NATS subject of `channel` on this bus.
    pub fn subject(&self, channel: &Channel) -> String {
        if self.prefix.is_empty() {
            channel.server.clone()
        } else {
            format!("{}.{}", self.prefix, channel.server)
        }
    }

    async fn nats_subscribe(&self, subject: &str, queue: bool) -> Result<async_nats::Subscriber> {
        let sub = if queue {
            self.client
                .queue_subscribe(subject.to_owned(), QUEUE_GROUP.to_owned())
                .await
        } else {
            self.client.subscribe(subject.to_owned()).await
        }
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("nats: subscribe {subject}: {e}"),
            )
        })?;
        self.sync()
            .await
            .map_err(|e| unavailable(&format!("subscribe {subject}"), e))?;
        Ok(sub)
    }

    /// Returns once the server has processed every operation this
    /// connection sent before the call (see [`Barrier`]).
    async fn sync(&self) -> std::result::Result<(), String> {
        let client = &self.state.client;
        let barrier = self
            .state
            .barrier
            .get_or_try_init(|| async {
                let subject = client.new_inbox();
                let mut sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let (tx, seen) = tokio::sync::watch::channel(0u64);
                // Ends when the bus state (holding the receiver) is gone.
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tx.closed() => break,
                            m = sub.next() => match m {
                                Some(m) => {
                                    let Ok(n) = <[u8; 8]>::try_from(&m.payload[..]) else {
                                        continue;
                                    };
                                    let n = u64::from_be_bytes(n);
                                    tx.send_if_modified(|s| {
                                        let newer = n > *s;
                                        if newer {
                                            *s = n;
                                        }
                                        newer
                                    });
                                }
                                None => break,
                            },
                        }
                    }
                    let _ = sub.unsubscribe().await;
                });
                Ok::<_, String>(Barrier {
                    subject,
                    next: AtomicU64::new(1),
                    seen,
                })
            })
            .await?;
        let n = barrier.next.fetch_add(1, Ordering::Relaxed);
        client
            .publish(
                barrier.subject.clone(),
                Bytes::copy_from_slice(&n.to_be_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = barrier.seen.clone();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, seen.wait_for(|s| *s >= n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("connection closed".into()),
            Err(_) => Err(format!(
                "not confirmed by the server within {SUBSCRIBE_TIMEOUT:?}"
            )),
        }
    }

    /// Adds a sink to `channel`; returns what removes it.
    async fn add(&self, channel: &Channel, queue: bool, sink: Sink) -> Result<Remover> {
        self.check_channel(channel)?;
        let subject = self.subject(channel);
        if channel.local.is_empty() {
            return self.add_direct(subject, queue, sink).await;
        }
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (subject.clone(), queue);
        let local = channel.local.clone();
        let creating = self.state.create.lock().await;
        let existing = {
            let routers = lock(&self.state.routers);
            routers
                .get(&key)
                .cloned()
                .inspect(|r| r.add(&local, id, sink.clone()))
        };
        if existing.is_none() {
            let nats = self.nats_subscribe(&subject, queue).await?;
            let router = Arc::new(Router {
                subject: subject.clone(),
                queue,
                routes: RwLock::new(HashMap::new()),
                nats: Arc::new(Mutex::new(Some(nats))),
                stop: CancellationToken::new(),
            });
            router.add(&local, id, sink);
            lock(&self.state.routers).insert(key.clone(), router.clone());
            tokio::spawn(run_router(router, self.state.clone()));
        }
        drop(creating);
        let state = Arc::downgrade(&self.state);
        Ok(Box::new(move || {
            let Some(state) = state.upgrade() else { return };
            let mut routers = lock(&state.routers);
            let Some(router) = routers.get(&key).cloned() else {
                return;
            };
            if router.remove(&local, id) {
                routers.remove(&key);
                drop(routers);
                router.stop.cancel();
                close_slot(&router.nats, &router.subject, router.queue, &state);
            }
        }))
    }

    /// A subscription of the whole subject (no `Msg.channel` routing): one
    /// NATS subscription read by one task that feeds the sink.
    async fn add_direct(&self, subject: String, queue: bool, sink: Sink) -> Result<Remover> {
        let nats: Slot = Arc::new(Mutex::new(Some(
            self.nats_subscribe(&subject, queue).await?,
        )));
        let stop = CancellationToken::new();
        tokio::spawn(run_direct(
            nats.clone(),
            subject.clone(),
            queue,
            sink,
            self.state.clone(),
            stop.clone(),
        ));
        let state = Arc::downgrade(&self.state);
        Ok(Box::new(move || {
            stop.cancel();
            if let Some(state) = state.upgrade() {
                close_slot(&nats, &subject, queue, &state);
            }
        }))
    }

    async fn add_chan(&self, channel: &Channel, size: usize, queue: bool) -> Result<Subscription> {
        // A burst is buffered for a subscriber that keeps reading; one that
        // stops is cut off: see the crate docs (slow consumers).
        let (sink, rx) = Sink::for_reader(size);
        let remove = self.add(channel, queue, sink).await?;
        Ok(Subscription::new(rx, remove))
    }
}

/// What unsubscribes a sink.
type Remover = Box<dyn FnOnce() + Send + Sync>;

/// A NATS subscription shared by the task reading it and the closer, which
/// takes it out to unsubscribe at once (see [`close_slot`]).
type Slot = Arc<Mutex<Option<async_nats::Subscriber>>>;

/// The next message of the subscription in `slot`; `None` once it is closed.
fn next_message(slot: &Slot) -> impl Future<Output = Option<async_nats::Message>> + '_ {
    futures::future::poll_fn(move |cx| match lock(slot).as_mut() {
        Some(s) => s.poll_next_unpin(cx),
        None => std::task::Poll::Ready(None),
    })
}

/// Unsubscribes the subscription in `slot` before returning (the `UNSUB`
/// is queued on the connection ahead of anything sent afterwards, so a
/// later subscription's barrier proves the server dropped this one). A
/// queue subscription then hands what async-nats had already received for
/// it back to the group (see [`State::hand_back`]) instead of dropping it.
fn close_slot(slot: &Slot, subject: &str, queue: bool, state: &Arc<State>) {
    let Some(mut nats) = lock(slot).take() else {
        return;
    };
    // Queues the UNSUB without waiting when async-nats has room for it
    // (almost always); otherwise dropping the subscriber queues it.
    if async { nats.unsubscribe().await }.now_or_never().is_none() {
        return;
    }
    if !queue {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (subject, state) = (subject.to_owned(), state.clone());
    rt.spawn(async move {
        // Only what async-nats buffered: the stream ends after it.
        while let Some(m) = nats.next().await {
            state
                .hand_back(&subject, m.payload, "closed queue subscription")
                .await;
        }
    });
}

/// Reads a direct (unrouted) NATS subscription until it is closed.
async fn run_direct(
    nats: Slot,
    subject: String,
    queue: bool,
    sink: Sink,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            biased;
            m = next_message(&nats) => match m {
                Some(m) => m,
                None => return,
            },
            _ = &mut cancelled => return,
        };
        match sink.offer_or_drop(msg.payload, &state.drops, &subject) {
            Offer::Taken | Offer::Dropped | Offer::Full(_) => {}
            Offer::Gone(b) => {
                if queue {
                    state
                        .hand_back(&subject, b, "closed queue subscription")
                        .await;
                }
                return;
            }
        }
    }
}

/// Parses server URLs with async-nats' own parser (`host:port` alone means
/// `nats://host:port`).
fn parse_urls<'a>(urls: impl Iterator<Item = &'a str>) -> Result<Vec<ServerAddr>> {
    let addrs = urls
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| unavailable(&format!("invalid url {}", redact(u)), e))
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(unavailable("invalid url", "no server given"));
    }
    Ok(addrs)
}

/// Checks that `subject` is one nats-server takes from this bus: at most
/// `max` bytes, non-empty dot-separated tokens, none of them a wildcard
/// (`*`, `>`), no whitespace or control characters.
fn check_subject(subject: &str, max: usize) -> Result<()> {
    let invalid = |why: String| {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("nats: subject {why}: {}", Truncated(subject)),
        ))
    };
    if subject.len() > max {
        return invalid(format!(
            "of {} bytes is longer than the bus's limit of {max} bytes \
             (nats-server's max_control_line, {DEFAULT_MAX_CONTROL_LINE} by default, \
             less protocol overhead)",
            subject.len()
        ));
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return invalid(format!("contains {c:?}"));
    }
    for token in subject.split('.') {
        match token {
            "" => return invalid("has an empty token".into()),
            "*" | ">" => return invalid(format!("has the wildcard token {token:?}")),
            _ => {}
        }
    }
    Ok(())
}

/// Hides a password in a URL for error messages.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Hands a queue message this bus will not handle back to NATS (the
    /// same bytes on the same subject), so that the group picks a member
    /// again (see the crate docs, "no route"). Only a psrpc request is handed back (someone waits
    /// for its answer), and only once per message and bus within
    /// [`BOUNCE_MEMORY`], so that a message is never re-published more
    /// times in total than its group has members; anything else is dropped
    /// and counted.
    async fn hand_back(&self, subject: &str, payload: Bytes, why: &str) {
        let drop = |reason, detail: &dyn std::fmt::Display| {
            self.drops
                .record(reason, subject, &format_args!("{why}: {detail}"));
        };
        match psrpc::wire::decode_msg(payload.clone()) {
            Err(e) => return drop(DropReason::Malformed, &e),
            Ok(m) => {
                let request = <psrpc::wire::Request as psrpc::wire::Envelope>::TYPE_URL;
                if psrpc::wire::check_type(&m.type_url, request).is_err() {
                    return drop(DropReason::NoRoute, &"not a request, not handed back");
                }
            }
        }
        if !self.hand_back {
            return drop(DropReason::NoRoute, &"hand-back off");
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        payload.hash(&mut h);
        let key = h.finish();
        let first = {
            let mut b = lock(&self.bounces);
            let now = std::time::Instant::now();
            if b.len() >= BOUNCE_LIMIT {
                b.retain(|_, t| now.duration_since(*t) < BOUNCE_MEMORY);
            }
            match b.get(&key) {
                Some(t) if now.duration_since(*t) < BOUNCE_MEMORY => false,
                _ if b.len() >= BOUNCE_LIMIT => false,
                _ => {
                    b.insert(key, now);
                    true
                }
            }
        };
        if !first {
            return drop(DropReason::NoRoute, &"handed back once already");
        }
        tracing::debug!(subject, "nats bus: queue message handed back ({why})");
        if let Err(e) = self.client.publish(subject.to_owned(), payload).await {
            drop(DropReason::Broker, &format_args!("hand-back failed: {e}"));
        }
    }
}

/// `options` with an event callback that counts async-nats' own drops
/// (a subscription whose buffer in the client was full) in `drops`.
fn count_library_drops(options: ConnectOptions, drops: Arc<psrpc::drops::Drops>) -> ConnectOptions {
    options.event_callback(move |event| {
        if let async_nats::Event::SlowConsumer(sid) = event {
            drops.record(
                DropReason::Broker,
                &format!("(nats subscription {sid})"),
                &"async-nats subscription buffer full",
            );
        }
        std::future::ready(())
    })
}

impl Router {
    fn add(&self, local: &str, id: u64, sink: Sink) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let mut members = routes.get(local).map(|r| (**r).clone()).unwrap_or_default();
        members.add(id, sink, self.queue);
        routes.insert(local.to_owned(), Arc::new(members));
    }

    /// Removes a local subscriber; true when the router has none left.
    fn remove(&self, local: &str, id: u64) -> bool {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.get(local) {
            let mut members = (**r).clone();
            members.remove(id);
            if members.is_empty() {
                routes.remove(local);
            } else {
                routes.insert(local.to_owned(), Arc::new(members));
            }
        }
        routes.is_empty()
    }

    fn route(&self, local: &str) -> Option<Arc<Members>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(local)
            .cloned()
    }

    /// Hands `payload` to the local subscribers of its `Msg.channel`,
    /// without waiting: to every one on a fan-out subject, to exactly one
    /// (in turn) on a queue subject.
    async fn dispatch(&self, state: &State, payload: Bytes) {
        let route = match read_local(&payload) {
            Ok(local) => self.route(&local),
            Err(e) => {
                state.drops.record(DropReason::Malformed, &self.subject, &e);
                return;
            }
        };
        let Some(route) = route else {
            if self.queue {
                state
                    .hand_back(&self.subject, payload, "no local subscriber of its method")
                    .await;
            } else {
                tracing::trace!(subject = %self.subject, "nats bus: no route, dropped");
            }
            return;
        };
        if self.queue {
            if let Err(msg) = route.deliver_queue(payload, &state.drops, &self.subject) {
                state
                    .hand_back(&self.subject, msg, "closed queue subscription")
                    .await;
            }
        } else {
            route.deliver_fanout(&payload, &state.drops, &self.subject);
        }
    }
}

/// `Msg.channel` (field 3) of an envelope without copying it, with the
/// checks of a protobuf decoder: every field well-formed, field 3
/// length-delimited UTF-8, the last occurrence winning. Messages with groups
/// (never produced by psrpc) go through the full decoder.
fn read_local(msg: &[u8]) -> std::result::Result<std::borrow::Cow<'_, str>, String> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let malformed = || "malformed envelope".to_owned();
    let mut b = msg;
    let mut found: &[u8] = b"";
    while !b.is_empty() {
        let key = varint(&mut b).ok_or_else(malformed)?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 || key > u64::from(u32::MAX) {
            return Err(malformed());
        }
        match wire_type {
            0 => {
                varint(&mut b).ok_or_else(malformed)?;
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or_else(malformed)?;
            }
            2 => {
                let len = varint(&mut b).ok_or_else(malformed)?;
                let len = usize::try_from(len).map_err(|_| malformed())?;
                let (value, rest) = b.split_at_checked(len).ok_or_else(malformed)?;
                if field == 3 {
                    found = value;
                }
                b = rest;
            }
            3 | 4 => {
                return psrpc::wire::read_channel(msg)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| e.to_string());
            }
            _ => return Err(malformed()),
        }
        if field == 3 && wire_type != 2 {
            return Err(malformed());
        }
    }
    std::str::from_utf8(found)
        .map(std::borrow::Cow::Borrowed)
        .map_err(|_| "Msg.channel is not UTF-8".to_owned())
}

async fn run_router(router: Arc<Router>, state: Arc<State>) {
    let cancelled = router.stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            biased;
            m = next_message(&router.nats) => match m {
                Some(m) => m,
                None => return,
            },
            _ = &mut cancelled => return,
        };
        router.dispatch(&state, msg.payload).await;
    }
}

#[async_trait]
impl MessageBus for NatsBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        self.check_channel(channel)?;
        let subject = self.subject(channel);
        let payload = if channel.local.is_empty() {
            msg
        } else {
            psrpc::wire::append_channel(&msg, &channel.local)
        };
        let max = self.max_message_size();
        if payload.len() > max {
            return Err(Error::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "nats: message of {} bytes is larger than the bus's maximum of {max} bytes (max_payload)",
                    payload.len()
                ),
            ));
        }
        if !self.is_connected() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "nats: bus disconnected (the connection to NATS is down, reconnecting): message not sent",
            ));
        }
        let publish = self.client.publish(subject, payload);
        tokio::pin!(publish);
        // async-nats queues the publish for its connection task; that queue
        // is bounded and not drained while reconnecting: wait for room at
        // most PUBLISH_WAIT (a timer only when it is full).
        let r = match futures::poll!(&mut publish) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => match tokio::time::timeout(PUBLISH_WAIT, publish).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        "nats: publish queue full (is NATS reachable?)",
                    ));
                }
            },
        };
        r.map_err(|e| {
            use async_nats::client::PublishErrorKind as K;
            let code = match e.kind() {
                K::MaxPayloadExceeded => ErrorCode::ResourceExhausted,
                K::InvalidSubject => ErrorCode::InvalidArgument,
                K::Send => ErrorCode::Unavailable,
            };
            Error::new(code, format!("nats: publish: {e}"))
        })
    }

    fn drops(&self) -> &psrpc::drops::Drops {
        &self.state.drops
    }

    fn compression(&self) -> &psrpc::CompressionOptions {
        &self.compression
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        let subject = self.subject(channel);
        check_subject(&subject, self.max_subject)
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, false).await
    }

    /// Counts only the presence channels of streams
    /// ([`psrpc::stream::PRESENCE_SUBJECT_PREFIX`]; `None` for any other):
    /// core NATS cannot tell a subject's interest without publishing to it.
    /// A request with an empty payload goes to the subject: "no responders"
    /// means 0; a reply, or none within the probe timeout (the presence
    /// subscription ignores requests), means someone listens (1).
    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        if !channel
            .server
            .starts_with(psrpc::stream::PRESENCE_SUBJECT_PREFIX)
        {
            return Ok(None);
        }
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(PRESENCE_PROBE_TIMEOUT));
        match self
            .client
            .send_request(self.subject(channel), request)
            .await
        {
            Ok(_) => Ok(Some(1)),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Ok(Some(0)),
                async_nats::RequestErrorKind::TimedOut => Ok(Some(1)),
                _ => Err(unavailable("presence probe failed", e)),
            },
        }
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::{read_local, redact};

    /// The scanner agrees with the full decoder on good and bad envelopes.
    #[test]
    fn read_local_matches_the_decoder() {
        let good = psrpc::wire::append_channel(
            &psrpc::wire::encode_msg_raw("type.googleapis.com/x", b"\x08\x01"),
            "M.REQ",
        );
        let mut cases: Vec<Vec<u8>> = vec![
            good.to_vec(),
            Vec::new(),
            b"\x1a\x00".to_vec(),
            b"\x1a\x01a\x1a\x01b".to_vec(),
            b"\xff\xff\xff".to_vec(),
            b"\x1a\x80".to_vec(),
            b"\x1a\x02\xff\xfe".to_vec(),
            b"\x18\x01".to_vec(),
            b"\x0b\x0c\x1a\x01z".to_vec(),
            b"\x09\x01\x02".to_vec(),
            b"\x00\x01".to_vec(),
            vec![0x1a; 300],
        ];
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for c in cases {
            let want = psrpc::wire::read_channel(&c).ok();
            let got = read_local(&c).ok().map(|s| s.into_owned());
            assert_eq!(got, want, "{c:02x?}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("nats://u:p@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://h:1,tls://a@b"), "nats://h:1,tls://***@b");
    }
}
