//! The NATS bus of psrpc, wire-compatible with Go psrpc (WIRE.md sections 3,
//! 3.1 and 13.2).
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
//!   it is behind, up to `size` more (so a burst costs a subscriber that
//!   keeps reading nothing); what does not fit is dropped for it at once.
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
//! Tested topologies: one server, and a 3-node cluster (routes) on loopback
//! with the clients and servers of each test on different nodes (the whole
//! conformance suite). Several server URLs (`nats://a:4222,nats://b:4222`)
//! let async-nats fail over between nodes; TLS, tokens and credentials files
//! go through [`NatsBus::connect_with_options`] or
//! [`NatsBus::from_client`] (not tested here).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use psrpc::bus::{Channel, Members, MessageBus, Offer, Sink, Subscription};
use psrpc::drops::DropReason;
use psrpc::{CancellationToken, Error, ErrorCode, Result};
use std::future::Future;

pub use async_nats;

/// The queue group of every queue subscription (Go psrpc's `bus`).
pub const QUEUE_GROUP: &str = "bus";

/// Unused: the bus's readers never wait for a subscriber (see
/// [Slow consumers](crate#deliberate-choices)).
#[deprecated(
    note = "the readers never wait: a subscription buffers up to twice its size, then drops"
)]
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_millis(100);

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

    /// Moves `user:password@` (or `token@`) out of the URLs into the options:
    /// async-nats does not send the credentials of a URL when the server asks
    /// for them.
    fn credentials(url: &str, mut options: ConnectOptions) -> (String, ConnectOptions) {
        let mut creds = None;
        let urls: Vec<String> = url
            .split(',')
            .map(|u| {
                let u = u.trim();
                let Some(s) = u.find("://") else {
                    return u.to_owned();
                };
                let rest = &u[s + 3..];
                let host_end = rest.find('/').unwrap_or(rest.len());
                match rest[..host_end].rfind('@') {
                    Some(at) => {
                        creds.get_or_insert_with(|| rest[..at].to_owned());
                        format!("{}{}", &u[..s + 3], &rest[at + 1..])
                    }
                    None => u.to_owned(),
                }
            })
            .collect();
        if let Some(c) = creds {
            options = match c.split_once(':') {
                Some((user, pass)) => options.user_and_password(user.into(), pass.into()),
                None => options.token(c),
            };
        }
        (urls.join(","), options)
    }

    /// As [`connect`](Self::connect), with async-nats options (credentials,
    /// TLS, name, ...). Setting `retry_on_initial_connect` makes construction
    /// wait for the server instead of failing.
    pub async fn connect_with_options(url: &str, options: ConnectOptions) -> Result<NatsBus> {
        let (addrs, options) = Self::credentials(url, options);
        let drops = Arc::new(psrpc::drops::Drops::default());
        let client = count_library_drops(options, drops.clone())
            .connect(addrs)
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {}", redact(url)), e))?;
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
        NatsBus {
            client: client.clone(),
            prefix: Arc::from(""),
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
        }
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
        note = "the readers never wait: a subscription buffers up to twice its size, then drops"
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
        // A subscriber that falls behind but keeps reading may lag by
        // twice its buffer; see the crate docs (slow consumers).
        let (sink, rx) = Sink::new(size, size.max(1), Duration::MAX);
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
        let subject = self.subject(channel);
        let payload = if channel.local.is_empty() {
            msg
        } else {
            psrpc::wire::append_channel(&msg, &channel.local)
        };
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
        r.map_err(|e| Error::new(ErrorCode::Internal, format!("nats: publish: {e}")))
    }

    fn drops(&self) -> &psrpc::drops::Drops {
        &self.state.drops
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, false).await
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
