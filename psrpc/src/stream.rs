//! Bidirectional streams (docs/PROTOCOL.md, "Streams"): [`ClientStream`] and
//! [`ServerStream`].
//!
//! A client opens a stream with [`RpcClient::stream`](crate::RpcClient::stream);
//! the first server to claim it (or, for multi and single-server methods,
//! every server that hears it) runs its stream handler, registered with
//! [`RpcServer::stream_route`](crate::RpcServer::stream_route).
//! After that both ends are alike:
//!
//! * `send(msg)` returns once the peer has *accepted* the message into its
//!   receive buffer (it acknowledges it), or fails at the per-message timeout
//!   (the stream's timeout, or `send_timeout`);
//! * `recv()` (or the `futures::Stream` impl) yields the messages the peer
//!   sent, in order, and `None` once the stream is closed;
//! * `close(cause)` ends the stream for both: the peer's `err()` is `cause`
//!   (`canceled` "stream closed" without one);
//! * `err()` says why the stream ended.
//!
//! # Slow receivers
//!
//! Each end buffers up to `channel_size` (default 100) received messages
//! that the application has not read yet. A message is acknowledged when it
//! enters that buffer. A message that arrives while the buffer is full is
//! held, unacknowledged (at most `channel_size` more are held, in order),
//! until the application makes room; it is then buffered and acknowledged,
//! so a momentarily slow reader only slows the sender's `send` down. If
//! there is no room before the message expires (the sender's send timeout),
//! or the holding area is full as well, the message is discarded and never
//! acknowledged: the sender's `send` fails with `deadline_exceeded`, and the
//! sender decides what to do, as a Go peer expects. Memory never
//! grows past twice the buffer.
//!
//! # Server side
//!
//! The handler owns its [`ServerStream`]. When the handler returns, the
//! stream is closed with the handler's error (or plainly on `Ok`), unless the
//! handler called [`ServerStream::hijack`]: the application then keeps the
//! stream and closes it itself (dropping a hijacked stream closes it).
//! `shutdown()` and `kill()` of the server close every open stream with
//! `unavailable` "EOF".
//!
//! # Dead peers
//!
//! A peer that dies without closing (killed, crashed, cut off from the
//! broker) sends no close. So that neither end waits for it forever, each
//! end watches the other while the stream is open, through the bus's count
//! of subscribers ([`MessageBus::listeners`](crate::MessageBus::listeners)),
//! which never delivers anything to the peer:
//!
//! * each end of a Rust stream subscribes a *presence channel* of its own
//!   for as long as the stream is open (Redis channel
//!   `<service>|<stream id>|CLI|LIVE` or `...|SRV|LIVE`, NATS subject
//!   `PSRPC_LIVE.<service>.<stream id>.CLI` or `.SRV`); nobody publishes
//!   there, so it costs one subscription per stream end;
//! * every [`StreamLiveness::interval`] (default 1 s) an end asks the bus
//!   how many subscribers the peer's presence channel has, and, where the
//!   bus can count without publishing (Redis `PUBSUB NUMSUB`, the local
//!   bus's own table), the peer's stream channel too;
//! * a channel seen with a subscriber that then has none for
//!   [`StreamLiveness::dead_after`] (default 4 s), or whose count cannot be
//!   had (broker unreachable) for that long, ends the stream with
//!   `unavailable`: `recv` returns `None`, `err()` says why, pending and
//!   later sends fail with it. The close message is sent as for any close.
//!
//! So a client learns that its server process died, and a server that its
//! client died, within `dead_after` plus one interval of the last look
//! that saw it (measured on loopback from the SIGKILL of the peer process
//! to the end of the stream, with the defaults: 3.0 to 4.5 s on Redis and
//! NATS, 3.5 to 4 s on the local bus).
//!
//! The first look is taken as soon as the stream is open. Each end
//! subscribes its presence channel while its open (client) or its ack
//! (server) travels, so opening costs no extra round trip and a live Rust
//! peer normally shows at the first look, at the latest at the next one. A
//! peer whose presence channel is empty at every look is never taken for
//! dead: it may be a Go peer. So on NATS a peer that dies before this end
//! has seen it once is not noticed.
//!
//! How each bus counts:
//!
//! * local bus: its own table of subscriptions;
//! * Redis: `PUBSUB NUMSUB` on the command connection (with the bus's
//!   prefix). In a Redis Cluster that command only counts the subscribers
//!   of the node asked, so the cluster bus reports that it cannot tell, and
//!   streams there are not watched;
//! * NATS: core NATS has no way to ask for a subject's interest without
//!   publishing to it (the server's subscription lists are for the system
//!   account only). The bus therefore only counts presence subjects, and
//!   does it with a request carrying an empty payload: the server answers
//!   "no responders" at once when nobody subscribes (needs headers, on by
//!   default since nats-server 2.2); otherwise the presence subscription
//!   takes the request and ignores it, and the probe's silence (500 ms)
//!   counts as present, as does a probe while the connection is down.
//!   Nothing reaches a psrpc channel.
//!
//! With a Go peer nothing changes on the wire: a Go process never
//! subscribes presence channels, so its presence is never seen and never
//! missed. On Redis and the local bus its death is still noticed through
//! its stream channel: a Go client's own, or, for a Go server, the
//! method's stream channel once no server of the method listens any more.
//! On NATS a Go peer is not watched (as before: `send` fails at its timeout,
//! `recv` waits). Configure it with `ClientOptions::stream_liveness` and
//! `ServerOptions::stream_liveness`; [`StreamLiveness::disabled`] turns it
//! off.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{DynBus, HandlerSubscription};
use crate::channels::Channel;
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{BoxMessage, Context, RpcInfo};
use crate::interceptor::{StreamInterceptor, StreamSendNext, StreamTerminal};
use crate::wire::{self, StreamAck, StreamBody, StreamClose, StreamMessage};

/// How a stream end watches its peer (see [Dead peers](self#dead-peers)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLiveness {
    /// How often the peer is looked for; zero turns watching off.
    pub interval: Duration,
    /// How long a peer seen before may be missing before the stream ends
    /// with `unavailable`.
    pub dead_after: Duration,
}

/// The default [`StreamLiveness::interval`]: 1 s.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// The default [`StreamLiveness::dead_after`]: 4 s.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(4);

impl Default for StreamLiveness {
    fn default() -> Self {
        StreamLiveness {
            interval: DEFAULT_LIVENESS_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }
}

impl StreamLiveness {
    /// Look every `interval`; end the stream after `dead_after` without the peer.
    pub fn new(interval: Duration, dead_after: Duration) -> Self {
        StreamLiveness {
            interval,
            dead_after,
        }
    }

    /// No watching: a stream ends only when closed (by either end, or the
    /// caller's context).
    pub fn disabled() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO)
    }

    /// Whether the peer is watched.
    pub fn is_enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// The NATS subject namespace of presence channels (see [Dead
/// peers](self#dead-peers)); no Go psrpc process subscribes in it.
pub const PRESENCE_SUBJECT_PREFIX: &str = "PSRPC_LIVE.";

/// The presence channel of one end of stream `stream_id` of `service`: the
/// client's end (`client_end`) or the server's.
pub fn presence_channel(service: &str, stream_id: &str, client_end: bool) -> Channel {
    use crate::channels::{Part, join, sanitize};
    let side = if client_end { "CLI" } else { "SRV" };
    Channel {
        legacy: join(
            '|',
            &[
                Part::One(service),
                Part::One(stream_id),
                Part::One(side),
                Part::One("LIVE"),
            ],
        ),
        // The stream id comes from the peer: sanitized, it holds no `.`,
        // `*` or `>`.
        server: format!(
            "{PRESENCE_SUBJECT_PREFIX}{service}.{}.{side}",
            sanitize(stream_id)
        ),
        local: String::new(),
    }
}

/// The open streams of a client, or of one server stream handler, by id.
pub(crate) type StreamTable = Mutex<id::IdBytesMap<Arc<dyn StreamEntry>>>;

/// A stream as the table holds it, without its message types.
pub(crate) trait StreamEntry: Send + Sync {
    /// Handles an incoming message of this stream (never an open): `m`
    /// read in place from `payload`.
    fn on_stream(self: Arc<Self>, payload: &Bytes, m: wire::StreamView<'_>);
    /// Closes the stream with `cause` and returns the publish of the close
    /// message (`None` when it was closed already).
    fn close_now(&self, cause: Error) -> Option<BoxFuture<'static, Result<()>>>;
}

/// Routes an incoming stream message to its stream. Messages of unknown
/// streams are dropped.
pub(crate) fn dispatch(table: &StreamTable, payload: &Bytes, m: wire::StreamView<'_>) {
    match lookup(table, m.stream_id) {
        Some(e) => e.on_stream(payload, m),
        None => {
            tracing::trace!(stream_id = %String::from_utf8_lossy(m.stream_id), "psrpc stream: message for unknown stream dropped")
        }
    }
}

/// Reads the stream message `payload` in place and runs `f` on it. A
/// message prost reads but this reader does not (fields repeated or in an
/// unusual form) is decoded by prost and re-encoded plainly first; one that
/// is not a `Stream` at all is dropped, counted and logged as at any read.
pub(crate) fn with_stream<T>(
    bus: &(impl crate::bus::MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    payload: Bytes,
    f: impl FnOnce(&Bytes, wire::StreamView<'_>) -> T,
) -> Option<T> {
    if let Some(v) = wire::read_stream(&payload) {
        return Some(f(&payload, v));
    }
    let m: wire::Stream = crate::codec::decode_payload(bus, channel, payload)?;
    let plain = wire::encode(&m);
    let v = wire::read_stream(&plain)?;
    Some(f(&plain, v))
}

/// The open stream `stream_id` of `table`.
pub(crate) fn lookup(table: &StreamTable, stream_id: &[u8]) -> Option<Arc<dyn StreamEntry>> {
    lock(table).get(stream_id).cloned()
}

/// Closes every stream of `table` with `cause`; returns the publishes.
pub(crate) fn close_all(table: &StreamTable, cause: &Error) -> Vec<BoxFuture<'static, Result<()>>> {
    let entries: Vec<_> = lock(table).drain().map(|(_, e)| e).collect();
    entries
        .into_iter()
        .filter_map(|e| e.close_now(cause.clone()))
        .collect()
}

/// Runs a publish in the background (in the current tokio runtime, if any).
pub(crate) fn spawn_publish(f: BoxFuture<'static, Result<()>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(async move {
                if let Err(e) = f.await {
                    tracing::warn!(error = %e, "psrpc stream: publish failed");
                }
            });
        }
        Err(_) => tracing::warn!("psrpc stream: publish dropped, no tokio runtime"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes without making the caller wait: the publish is polled once
/// right here (the local bus completes at once) and only moved to a task
/// when it has to wait.
pub(crate) fn publish_detached(bus: &DynBus, ch: &Arc<Channel>, msg: Bytes) {
    let (bus, ch) = (bus.clone(), ch.clone());
    let mut fut: BoxFuture<'static, Result<()>> =
        Box::pin(async move { (*bus).publish(&ch, msg).await });
    let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => tracing::warn!(error = %e, "psrpc stream: publish failed"),
        Poll::Ready(Ok(())) => {}
        Poll::Pending => spawn_publish(fut),
    }
}

struct State<R> {
    /// Why the stream ended; `None` while open.
    cause: Option<Error>,
    /// The receive buffer; dropped when the stream closes.
    tx: Option<mpsc::Sender<R>>,
    /// Messages waiting for room in the receive buffer, in arrival order,
    /// not yet acknowledged.
    overflow: std::collections::VecDeque<(R, AckOf)>,
    /// A task is moving `overflow` into the buffer.
    draining: bool,
}

/// What the ack of a message echoes.
struct AckOf {
    request_id: String,
    sent_at: i64,
    expiry: i64,
}

/// Held messages are given up this long before their expiry, so that one
/// is never accepted after its sender stopped waiting for it.
const OVERFLOW_MARGIN: Duration = Duration::from_millis(5);

/// What both ends of one stream share with the bus side.
pub(crate) struct Shared<R> {
    stream_id: String,
    info: Arc<RpcInfo>,
    bus: DynBus,
    /// Where this end's messages go.
    out: Arc<Channel>,
    /// Default send timeout, and the expiry of the close message.
    timeout: Duration,
    acks: Mutex<id::IdBytesMap<oneshot::Sender<()>>>,
    state: Mutex<State<R>>,
    /// Canceled when the stream closes (wakes pending sends; ends the
    /// server handler's context).
    done: CancellationToken,
    table: Weak<StreamTable>,
    interceptors: Arc<[Arc<dyn StreamInterceptor>]>,
}

/// Everything needed to make one end of a stream.
pub(crate) struct StreamParams {
    pub(crate) stream_id: String,
    pub(crate) info: Arc<RpcInfo>,
    pub(crate) bus: DynBus,
    pub(crate) out: Arc<Channel>,
    pub(crate) timeout: Duration,
    pub(crate) buffer: usize,
    pub(crate) table: Weak<StreamTable>,
    pub(crate) interceptors: Arc<[Arc<dyn StreamInterceptor>]>,
}

impl<R: Message + Default + Clone + 'static> Shared<R> {
    pub(crate) fn new(p: StreamParams) -> (Arc<Self>, mpsc::Receiver<R>) {
        let (tx, rx) = mpsc::channel(p.buffer.max(1));
        let shared = Arc::new(Shared {
            stream_id: p.stream_id,
            info: p.info,
            bus: p.bus,
            out: p.out,
            timeout: p.timeout,
            acks: Mutex::default(),
            state: Mutex::new(State {
                cause: None,
                tx: Some(tx),
                overflow: Default::default(),
                draining: false,
            }),
            done: CancellationToken::new(),
            table: p.table,
            interceptors: p.interceptors,
        });
        (shared, rx)
    }

    pub(crate) fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub(crate) fn done(&self) -> &CancellationToken {
        &self.done
    }

    /// Waits for the ack of `request_id` (the open's, pre-seeded).
    pub(crate) fn expect_ack(&self, request_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.acks).insert(request_id.as_bytes().into(), tx);
        rx
    }

    pub(crate) fn forget_ack(&self, request_id: &str) {
        lock(&self.acks).remove(request_id.as_bytes());
    }

    /// Subscribes this end's presence channel (see [Dead
    /// peers](self#dead-peers)); `None` when `liveness` is disabled or the
    /// subscription failed (logged). Done before this end sends the open
    /// (or its ack), so that the peer's first look finds it.
    pub(crate) async fn presence(
        &self,
        liveness: StreamLiveness,
        client_end: bool,
    ) -> Option<HandlerSubscription> {
        if !liveness.is_enabled() {
            return None;
        }
        let own = presence_channel(&self.info.service, &self.stream_id, client_end);
        let ignore: crate::bus::Handler = Arc::new(|_| {});
        match self.bus.subscribe_handler(&own, 1, false, ignore).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    stream_id = %self.stream_id,
                    error = %e,
                    "psrpc stream: cannot subscribe the presence channel; the peer will not notice if this end dies"
                );
                None
            }
        }
    }

    /// Starts watching the peer once the stream is open: a task looks at
    /// once, then every interval, until the stream ends; it keeps this
    /// end's `presence` subscription until then.
    pub(crate) fn watch_peer(
        self: &Arc<Self>,
        liveness: StreamLiveness,
        client_end: bool,
        presence: Option<HandlerSubscription>,
    ) {
        if !liveness.is_enabled() || self.done.is_cancelled() {
            return;
        }
        let peer = presence_channel(&self.info.service, &self.stream_id, !client_end);
        let me = self.clone();
        tokio::spawn(async move {
            let _presence = presence;
            me.probe(liveness, peer).await;
        });
    }

    /// Looks for the peer every interval until the stream ends; ends it
    /// with `unavailable` once the peer was missing for `dead_after`.
    async fn probe(&self, liveness: StreamLiveness, peer_presence: Channel) {
        struct Probe {
            ch: Channel,
            /// When a subscriber was last seen; `None`: never (not armed).
            seen: Option<Instant>,
        }
        let mut probes = vec![
            // The peer subscribed its stream channel before the open (or
            // its ack) was sent: armed from the start.
            Probe {
                ch: (*self.out).clone(),
                seen: Some(Instant::now()),
            },
            // Armed once seen: a Go peer never subscribes it.
            Probe {
                ch: peer_presence,
                seen: None,
            },
        ];
        let mut first = true;
        while !probes.is_empty() {
            if !std::mem::take(&mut first) {
                tokio::select! {
                    _ = self.done.cancelled() => return,
                    _ = tokio::time::sleep(liveness.interval) => {}
                }
            } else if self.done.is_cancelled() {
                return;
            }
            let mut i = 0;
            while i < probes.len() {
                let p = &mut probes[i];
                let asked = tokio::time::timeout(liveness.interval, self.bus.listeners(&p.ch));
                match asked.await {
                    Ok(Ok(None)) => {
                        // This bus cannot count this channel.
                        probes.remove(i);
                        continue;
                    }
                    Ok(Ok(Some(n))) if n > 0 => p.seen = Some(Instant::now()),
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(stream_id = %self.stream_id, error = %e, "psrpc stream: peer probe failed")
                    }
                    Err(_) => {
                        tracing::debug!(stream_id = %self.stream_id, "psrpc stream: peer probe timed out")
                    }
                }
                if let Some(seen) = p.seen
                    && seen.elapsed() >= liveness.dead_after
                {
                    let cause = Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "stream peer gone: no subscriber on {} for {:?}",
                            p.ch.legacy, liveness.dead_after
                        ),
                    );
                    tracing::warn!(stream_id = %self.stream_id, error = %cause, "psrpc stream: closing");
                    self.close_detached(cause);
                    return;
                }
                i += 1;
            }
        }
    }

    /// Why the stream ended, if it has.
    pub(crate) fn cause(&self) -> Option<Error> {
        lock(&self.state).cause.clone()
    }

    pub(crate) fn open_interceptors(&self) {
        for i in self.interceptors.iter() {
            i.open(&self.info);
        }
    }

    /// Marks the stream closed with `cause`: the receive buffer ends, pending
    /// sends wake with `cause`, the stream leaves its table. `Err(previous)`
    /// when it was closed already.
    fn mark_closed(&self, cause: Error) -> std::result::Result<(), Error> {
        {
            let mut st = lock(&self.state);
            if let Some(prev) = &st.cause {
                return Err(prev.clone());
            }
            st.cause = Some(cause);
            st.tx = None;
            st.overflow.clear();
        }
        if let Some(t) = self.table.upgrade() {
            let mut t = lock(&t);
            // Only this stream's own entry (ids are unique, but be exact).
            if t.get(self.stream_id.as_bytes()).is_some() {
                t.remove(self.stream_id.as_bytes());
            }
        }
        self.done.cancel();
        Ok(())
    }

    fn close_message(&self, cause: &Error) -> Bytes {
        let now = wire::now_ns();
        let code = match cause.code() {
            ErrorCode::Ok => ErrorCode::Unknown.as_str().to_owned(),
            _ => cause.wire_code().to_owned(),
        };
        self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: id::new_request_id(),
            sent_at: now,
            expiry: now.saturating_add(self.timeout.as_nanos() as i64),
            body: Some(StreamBody::Close(StreamClose {
                error: cause.message().to_owned(),
                code,
            })),
        })
    }

    /// Closes the stream locally with `cause` (`None`: `canceled` "stream
    /// closed") and tells the peer. When it was closed already, returns the
    /// earlier cause as the error and sends nothing.
    pub(crate) async fn close(&self, cause: Option<Error>) -> Result<()> {
        if self.cause().is_none() {
            for i in self.interceptors.iter() {
                i.close(&self.info, cause.as_ref());
            }
        }
        let msg = self.end(cause.unwrap_or_else(Error::stream_closed))?;
        (*self.bus).publish(&self.out, msg).await
    }

    /// [`close`](Self::close) without waiting for the publish.
    pub(crate) fn close_detached(&self, cause: Error) {
        if let Ok(msg) = self.end(cause) {
            publish_detached(&self.bus, &self.out, msg);
        }
    }

    /// Marks the stream closed with `cause` and returns the close message
    /// to tell the peer; `Err(earlier cause)` when it was closed already.
    fn end(&self, cause: Error) -> std::result::Result<Bytes, Error> {
        let msg = self.close_message(&cause);
        self.mark_closed(cause)?;
        Ok(msg)
    }

    /// Sends one encoded message and waits for its ack.
    pub(crate) async fn send_raw(&self, raw: Bytes, timeout: Option<Duration>) -> Result<()> {
        if let Some(c) = self.cause() {
            return Err(c);
        }
        let t = timeout.filter(|t| !t.is_zero()).unwrap_or(self.timeout);
        let deadline = Instant::now() + t;
        let request_id = id::new_request_id();
        let ack = self.expect_ack(&request_id);
        let _guard = AckGuard {
            acks: &self.acks,
            request_id: &request_id,
        };
        let now = wire::now_ns();
        let msg = self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: request_id.clone(),
            sent_at: now,
            expiry: now.saturating_add(t.as_nanos() as i64),
            body: Some(StreamBody::Message(StreamMessage {
                raw_message: raw,
                ..Default::default()
            })),
        });
        (*self.bus).publish(&self.out, msg).await?;
        tokio::select! {
            biased;
            r = ack => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(self.cause().unwrap_or_else(Error::stream_closed)),
            },
            _ = self.done.cancelled() => Err(self.cause().unwrap_or_else(Error::stream_closed)),
            _ = tokio::time::sleep_until(deadline) => {
                Err(self.cause().unwrap_or_else(Error::request_timed_out))
            }
        }
    }

    fn ack(&self, request_id: &str, sent_at: i64, expiry: i64) {
        let ack = self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: request_id.to_owned(),
            sent_at,
            expiry,
            body: Some(StreamBody::Ack(StreamAck {})),
        });
        publish_detached(&self.bus, &self.out, ack);
    }

    /// Moves held messages into the receive buffer as room appears, in
    /// order, acknowledging each; gives up on one at its expiry.
    async fn drain_overflow(self: Arc<Self>) {
        loop {
            let (tx, msg, ack) = {
                let mut guard = lock(&self.state);
                let st = &mut *guard;
                let next = match (&st.tx, st.overflow.pop_front()) {
                    (Some(tx), Some((msg, ack))) => Some((tx.clone(), msg, ack)),
                    _ => None,
                };
                match next {
                    Some(n) => n,
                    None => {
                        st.draining = false;
                        return;
                    }
                }
            };
            let left =
                Duration::from_nanos(ack.expiry.saturating_sub(wire::now_ns()).max(0) as u64);
            let deadline = Instant::now() + left.saturating_sub(OVERFLOW_MARGIN);
            let permit = tokio::select! {
                p = tx.reserve_owned() => p.ok(),
                _ = tokio::time::sleep_until(deadline) => None,
                _ = self.done.cancelled() => None,
            };
            match permit {
                Some(p) => {
                    let st = lock(&self.state);
                    if st.cause.is_none() {
                        // The sender clone goes right away: a close must end the buffer.
                        drop(p.send(msg));
                        self.ack(&ack.request_id, ack.sent_at, ack.expiry);
                    }
                }
                None => {
                    if !self.done.is_cancelled() {
                        let why = format_args!(
                            "stream {}: receive buffer stayed full until the message expired; not acknowledged",
                            self.stream_id
                        );
                        let reason = crate::drops::DropReason::SlowConsumer;
                        self.bus
                            .drops()
                            .record(reason, "(stream receive buffer)", &why);
                    }
                }
            }
        }
    }
}

struct AckGuard<'a> {
    acks: &'a Mutex<id::IdBytesMap<oneshot::Sender<()>>>,
    request_id: &'a str,
}

impl Drop for AckGuard<'_> {
    fn drop(&mut self) {
        lock(self.acks).remove(self.request_id.as_bytes());
    }
}

impl<R: Message + Default + Clone + 'static> StreamEntry for Shared<R> {
    fn on_stream(self: Arc<Self>, payload: &Bytes, m: wire::StreamView<'_>) {
        match m.body {
            wire::STREAM_ACK_TAG => {
                if let Some(w) = lock(&self.acks).remove(m.request_id) {
                    let _ = w.send(());
                }
            }
            wire::STREAM_MESSAGE_TAG => {
                let body = match StreamMessage::decode(payload.slice(m.body_bytes.clone())) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format_args!("stream {}: {e}", self.stream_id);
                        let reason = crate::drops::DropReason::Malformed;
                        self.bus.drops().record(reason, "(stream)", &why);
                        return;
                    }
                };
                let msg = match R::decode(body.raw_message) {
                    Ok(msg) => msg,
                    Err(e) => {
                        if self.cause().is_none() {
                            let why =
                                format_args!("stream {}: {e}; closing the stream", self.stream_id);
                            let reason = crate::drops::DropReason::Malformed;
                            self.bus.drops().record(reason, "(stream)", &why);
                            self.close_detached(Error::wrap(ErrorCode::MalformedRequest, e));
                        }
                        return;
                    }
                };
                for i in self.interceptors.iter() {
                    if let Err(e) = i.recv(&self.info, &msg) {
                        tracing::debug!(stream_id = %self.stream_id, error = %e, "psrpc stream: message rejected by an interceptor");
                        return;
                    }
                }
                let Some(request_id) = m.request_id_str() else {
                    let why = format_args!("stream {}: request id not UTF-8", self.stream_id);
                    let reason = crate::drops::DropReason::Malformed;
                    self.bus.drops().record(reason, "(stream)", &why);
                    return;
                };
                {
                    // Under the state lock, so a concurrent close either
                    // happens before (the message is ignored) or after.
                    let mut st = lock(&self.state);
                    let Some(tx) = &st.tx else { return };
                    let msg = if st.draining {
                        msg
                    } else {
                        match tx.try_send(msg) {
                            Ok(()) => {
                                // Acknowledged before the lock is released,
                                // so a close that follows is published after
                                // the ack.
                                self.ack(request_id, m.sent_at(), m.expiry());
                                return;
                            }
                            Err(mpsc::error::TrySendError::Full(msg)) => msg,
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    };
                    // The buffer is full (or others wait already): hold the
                    // message, bounded, until there is room.
                    if st.overflow.len() >= tx.max_capacity() {
                        let why = format_args!(
                            "stream {}: receive buffer full, message not acknowledged",
                            self.stream_id
                        );
                        let reason = crate::drops::DropReason::SlowConsumer;
                        self.bus
                            .drops()
                            .record(reason, "(stream receive buffer)", &why);
                        return;
                    }
                    let ack = AckOf {
                        request_id: request_id.to_owned(),
                        sent_at: m.sent_at(),
                        expiry: m.expiry(),
                    };
                    st.overflow.push_back((msg, ack));
                    if st.draining {
                        return;
                    }
                    st.draining = true;
                }
                tokio::spawn(self.clone().drain_overflow());
            }
            wire::STREAM_CLOSE_TAG => {
                let c = match StreamClose::decode(payload.slice(m.body_bytes.clone())) {
                    Ok(c) => c,
                    Err(e) => {
                        let why = format_args!("stream {}: {e}", self.stream_id);
                        let reason = crate::drops::DropReason::Malformed;
                        self.bus.drops().record(reason, "(stream)", &why);
                        return;
                    }
                };
                let code = if c.code.is_empty() {
                    ErrorCode::Unknown.as_str()
                } else {
                    &c.code
                };
                let cause = Error::from_wire(code, c.error, Vec::new());
                let _ = self.mark_closed(cause);
            }
            _ => {}
        }
    }

    fn close_now(&self, cause: Error) -> Option<BoxFuture<'static, Result<()>>> {
        let msg = self.end(cause).ok()?;
        let (bus, out) = (self.bus.clone(), self.out.clone());
        Some(Box::pin(async move { (*bus).publish(&out, msg).await }))
    }
}

/// A handle that sends on a stream (and can close it) while another task
/// receives: get one with `sender()` on either end. Cheap to clone; dropping
/// it does not close the stream.
pub struct StreamSender<S, R: Message + Default + Clone + 'static> {
    shared: Arc<Shared<R>>,
    chain: Option<StreamSendNext>,
    _s: PhantomData<fn(S)>,
}

impl<S, R: Message + Default + Clone + 'static> Clone for StreamSender<S, R> {
    fn clone(&self) -> Self {
        StreamSender {
            shared: self.shared.clone(),
            chain: self.chain.clone(),
            _s: PhantomData,
        }
    }
}

impl<S, R: Message + Default + Clone + 'static> std::fmt::Debug for StreamSender<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("stream_id", &self.shared.stream_id)
            .finish()
    }
}

impl<S, R> StreamSender<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    fn new(shared: Arc<Shared<R>>) -> Self {
        let chain = (!shared.interceptors.is_empty()).then(|| {
            let s = shared.clone();
            let terminal: StreamTerminal = Arc::new(move |msg: BoxMessage, t| {
                let s = s.clone();
                Box::pin(async move { s.send_raw(Bytes::from(msg.to_bytes()), t).await })
            });
            StreamSendNext::new(shared.interceptors.clone(), shared.info.clone(), terminal)
        });
        StreamSender {
            shared,
            chain,
            _s: PhantomData,
        }
    }

    async fn send_opt(&self, msg: S, timeout: Option<Duration>) -> Result<()> {
        match &self.chain {
            None => {
                self.shared
                    .send_raw(Bytes::from(msg.encode_to_vec()), timeout)
                    .await
            }
            Some(next) => next.clone().run(Box::new(msg), timeout).await,
        }
    }

    /// Sends `msg` and waits until the peer has accepted it, at most the
    /// stream's timeout. Fails at once with the close cause on a closed
    /// stream; `deadline_exceeded` "request timed out" when the peer does
    /// not acknowledge in time (it is gone, or its buffer is full).
    pub async fn send(&self, msg: S) -> Result<()> {
        self.send_opt(msg, None).await
    }

    /// [`send`](Self::send) with its own timeout.
    pub async fn send_timeout(&self, msg: S, timeout: Duration) -> Result<()> {
        self.send_opt(msg, Some(timeout)).await
    }

    /// Closes the stream; the peer sees `cause` as its error (`None`:
    /// `canceled` "stream closed"). On a stream closed already, returns
    /// the earlier cause and sends nothing.
    pub async fn close(&self, cause: Option<Error>) -> Result<()> {
        self.shared.close(cause).await
    }

    /// Why the stream ended; `None` while it is open.
    pub fn err(&self) -> Option<Error> {
        self.shared.cause()
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.cause().is_some()
    }
}

/// One end of a stream, typed: sends `S`, receives `R`.
struct Endpoint<S, R: Message + Default + Clone + 'static> {
    tx: StreamSender<S, R>,
    rx: mpsc::Receiver<R>,
    ctx: Context,
}

impl<S, R> Endpoint<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    fn new(shared: Arc<Shared<R>>, rx: mpsc::Receiver<R>, ctx: Context) -> Self {
        Endpoint {
            tx: StreamSender::new(shared),
            rx,
            ctx,
        }
    }
}

impl<S, R: Message + Default + Clone + 'static> Endpoint<S, R> {
    fn shared(&self) -> &Arc<Shared<R>> {
        &self.tx.shared
    }
}

macro_rules! stream_methods {
    () => {
        /// Sends `msg` and waits until the peer has accepted it, at most the
        /// stream's timeout. Fails at once with the close cause on a closed
        /// stream; `deadline_exceeded` "request timed out" when the peer does
        /// not acknowledge in time (it is gone, or its buffer is full).
        pub async fn send(&self, msg: S) -> Result<()> {
            self.end.tx.send(msg).await
        }

        /// [`send`](Self::send) with its own timeout.
        pub async fn send_timeout(&self, msg: S, timeout: Duration) -> Result<()> {
            self.end.tx.send_timeout(msg, timeout).await
        }

        /// A handle to send on (and close) this stream from another task.
        pub fn sender(&self) -> StreamSender<S, R> {
            self.end.tx.clone()
        }

        /// The next message from the peer; `None` once the stream is closed
        /// and every buffered message was read ([`err`](Self::err) says why).
        pub async fn recv(&mut self) -> Option<R> {
            self.end.rx.recv().await
        }

        /// Closes the stream; the peer sees `cause` as its error (`None`:
        /// `canceled` "stream closed"). On a stream closed already, returns
        /// the earlier cause and sends nothing.
        pub async fn close(&self, cause: Option<Error>) -> Result<()> {
            self.end.shared().close(cause).await
        }

        /// Why the stream ended; `None` while it is open.
        pub fn err(&self) -> Option<Error> {
            self.end.shared().cause()
        }

        /// Whether the stream has ended.
        pub fn is_closed(&self) -> bool {
            self.end.shared().cause().is_some()
        }

        /// Resolves when the stream ends.
        pub async fn closed(&self) {
            self.end.shared().done().cancelled().await
        }

        /// The stream's context: on the server, the incoming header and the
        /// call info; canceled when the stream ends.
        pub fn context(&self) -> &Context {
            &self.end.ctx
        }

        /// The stream id (`STR_...`).
        pub fn stream_id(&self) -> &str {
            self.end.shared().stream_id()
        }
    };
}

/// The client end of a stream: sends `S`, receives `R`. Dropping it closes
/// the stream.
pub struct ClientStream<S, R: Message + Default + Clone + 'static> {
    end: Endpoint<S, R>,
}

impl<S, R> ClientStream<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    pub(crate) fn new(shared: Arc<Shared<R>>, rx: mpsc::Receiver<R>, ctx: Context) -> Self {
        ClientStream {
            end: Endpoint::new(shared, rx, ctx),
        }
    }

    stream_methods!();
}

impl<S, R: Message + Default + Clone + 'static> Drop for ClientStream<S, R> {
    fn drop(&mut self) {
        self.end.shared().close_detached(Error::stream_closed());
    }
}

/// The server end of a stream: sends `S`, receives `R`. The handler owns it;
/// see the [module docs](self) for what happens when the handler returns.
pub struct ServerStream<S, R: Message + Default + Clone + 'static> {
    end: Endpoint<S, R>,
    hijacked: Arc<AtomicBool>,
}

impl<S, R> ServerStream<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared<R>>,
        rx: mpsc::Receiver<R>,
        ctx: Context,
        hijacked: Arc<AtomicBool>,
    ) -> Self {
        ServerStream {
            end: Endpoint::new(shared, rx, ctx),
            hijacked,
        }
    }

    stream_methods!();

    /// Keeps the stream open after the handler returns: the application
    /// owns it from now on and closes it (dropping it closes it too).
    pub fn hijack(&self) {
        self.hijacked.store(true, Ordering::Release);
    }

    /// Whether [`hijack`](Self::hijack) was called.
    pub fn is_hijacked(&self) -> bool {
        self.hijacked.load(Ordering::Acquire)
    }
}

impl<S, R: Message + Default + Clone + 'static> Drop for ServerStream<S, R> {
    fn drop(&mut self) {
        // A handler's stream is closed by the runtime with the handler's
        // result; a hijacked one has no one else to close it.
        if self.hijacked.load(Ordering::Acquire) {
            self.end.shared().close_detached(Error::stream_closed());
        }
    }
}

macro_rules! stream_impls {
    ($t:ident) => {
        impl<S, R> futures::Stream for $t<S, R>
        where
            S: Message + Clone + 'static,
            R: Message + Default + Clone + 'static,
        {
            type Item = R;
            fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<R>> {
                // Only `rx` is touched; the endpoint is `Unpin`.
                self.get_mut().end.rx.poll_recv(cx)
            }
        }

        impl<S, R: Message + Default + Clone + 'static> std::fmt::Debug for $t<S, R> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("stream_id", &self.end.shared().stream_id)
                    .field("info", &self.end.shared().info)
                    .field("err", &self.end.shared().cause())
                    .finish()
            }
        }
    };
}

stream_impls!(ClientStream);
stream_impls!(ServerStream);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBus;

    /// A stream end on a bus where nobody listens: publishes succeed and
    /// nothing is ever acknowledged (the fake adapter of the Go unit tests).
    fn lonely(buffer: usize) -> (Arc<Shared<wire::Response>>, mpsc::Receiver<wire::Response>) {
        Shared::new(StreamParams {
            stream_id: "STR_test".into(),
            info: Arc::new(RpcInfo::default()),
            bus: Arc::new(LocalBus::new()),
            out: Arc::new(crate::channels::stream_channel("svc", "CLI_nobody")),
            timeout: Duration::from_secs(3),
            buffer,
            table: Weak::new(),
            interceptors: Arc::new([]),
        })
    }

    /// Hands `m` to `s` as the bus would.
    fn deliver(s: Arc<Shared<wire::Response>>, m: wire::Stream) {
        let b = wire::encode(&m);
        s.on_stream(&b, wire::read_stream(&b).expect("a plain Stream"));
    }

    fn incoming(body: StreamBody) -> wire::Stream {
        wire::Stream {
            stream_id: "STR_test".into(),
            request_id: id::new_request_id(),
            sent_at: wire::now_ns(),
            expiry: wire::now_ns() + 3_000_000_000,
            body: Some(body),
        }
    }

    /// ST1: a remote close releases a pending send with the remote cause,
    /// long before the send's own timeout.
    #[tokio::test]
    async fn close_releases_pending_send() {
        let (s, _rx) = lonely(10);
        let sending = {
            let s = s.clone();
            tokio::spawn(async move { s.send_raw(Bytes::new(), None).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        deliver(
            s.clone(),
            incoming(StreamBody::Close(StreamClose {
                error: "stream closed".into(),
                code: "canceled".into(),
            })),
        );
        let started = std::time::Instant::now();
        let err = sending.await.unwrap().expect_err("released by the close");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(err.code(), Error::stream_closed().code());
        assert_eq!(err.message(), Error::stream_closed().message());
    }

    /// ST2: a local close racing an incoming message never panics; the
    /// message is delivered or dropped, and the buffer ends either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_racing_a_message_never_panics() {
        let payload = Bytes::from(
            wire::Response {
                request_id: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        for _ in 0..1000 {
            let (s, mut rx) = lonely(1);
            let msg = incoming(StreamBody::Message(StreamMessage {
                raw_message: payload.clone(),
                ..Default::default()
            }));
            let feeder = {
                let s = s.clone();
                tokio::spawn(async move { deliver(s, msg) })
            };
            let closer = {
                let s = s.clone();
                tokio::spawn(async move { s.close(None).await })
            };
            feeder.await.unwrap();
            closer.await.unwrap().unwrap();
            // Whatever was delivered is readable, then the buffer ends.
            while let Some(r) = rx.recv().await {
                assert_eq!(r.request_id, "x");
            }
            assert_eq!(s.cause().unwrap().message(), "stream closed");
        }
    }

    /// A full buffer holds the next message unacknowledged and delivers it
    /// when the reader makes room; past the holding area, messages are
    /// dropped.
    #[tokio::test]
    async fn full_buffer_holds_then_delivers_in_order() {
        let (s, mut rx) = lonely(1);
        for n in 0..3 {
            let m = wire::Response {
                request_id: n.to_string(),
                ..Default::default()
            };
            deliver(
                s.clone(),
                incoming(StreamBody::Message(StreamMessage {
                    raw_message: Bytes::from(m.encode_to_vec()),
                    ..Default::default()
                })),
            );
        }
        // One buffered, one held, one dropped (holding area = buffer size).
        for want in ["0", "1"] {
            let got = tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.request_id, want);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err()
        );
    }
}
