//! The bus abstraction ([`MessageBus`], [`Subscription`]) and the in-process
//! [`LocalBus`].
//!
//! A bus moves bytes; it knows nothing of RPC. The runtime hands it encoded
//! `Msg` envelopes without the channel field; a bus that demultiplexes shared
//! subjects (NATS) appends `Msg.channel` itself with
//! [`wire::append_channel`](crate::wire::append_channel).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use crate::channels::Channel;
pub use crate::codec::CompressionOptions;
use crate::drops::{DropReason, Drops};
use crate::error::Result;

/// A publish/subscribe transport.
///
/// `subscribe` is fan-out (every subscription of the channel gets every
/// message); `subscribe_queue` is competing consumers (one queue subscription
/// in the whole system gets each message). Both return once the subscription
/// is in effect, so a message published afterwards is received.
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Publishes an encoded `Msg` envelope on `channel`.
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()>;

    /// Subscribes to every message of `channel`; `size` bounds the buffer.
    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription>;

    /// Joins the queue of `channel`: each message goes to one member.
    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription>;

    /// Subscribes `handler` to `channel` (as a queue member when `queue`):
    /// it is called with every message, and must be quick and never block.
    /// The runtime uses this for its own channels.
    ///
    /// The default reads a [`Subscription`] in a task. [`LocalBus`] calls
    /// the handler directly in the publisher's task, which saves a task hop
    /// per message there; for the networked buses, calling handlers from the
    /// connection's reader was measured slower under load (the reader then
    /// does the runtime's work), so they keep this default.
    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        let mut sub = if queue {
            self.subscribe_queue(channel, size).await?
        } else {
            self.subscribe(channel, size).await?
        };
        let task = tokio::spawn(async move {
            while let Some(b) = sub.recv().await {
                handler(b);
            }
        });
        Ok(HandlerSubscription::new(AbortOnDrop(task)))
    }

    /// What this bus, and the runtime above it, dropped (see
    /// [`crate::drops`]). The default is the process-wide tally.
    fn drops(&self) -> &Drops {
        Drops::global()
    }

    /// How the runtime encodes what it publishes on this bus (compression)
    /// and decodes what it reads (the decompression cap); see
    /// [`crate::codec`]. The default is [`CompressionOptions::DEFAULT`]:
    /// nothing compressed, gzip read, decompressed payloads capped.
    fn compression(&self) -> &CompressionOptions {
        &CompressionOptions::DEFAULT
    }

    /// Checks, without touching the broker, that `channel` can be published
    /// to and subscribed on this bus: its name fits the broker's limits and
    /// contains nothing the broker reads as syntax. Fails with
    /// `invalid_argument` naming the limit. The runtime checks the channels
    /// it would answer a peer on before doing any work for it; a bus also
    /// checks in its own `publish` and `subscribe`. The default accepts
    /// every channel (the local bus has no limits).
    fn check_channel(&self, _channel: &Channel) -> Result<()> {
        Ok(())
    }

    /// How many subscriptions `channel` has right now, in every process on
    /// the bus, learnt without delivering anything to them; `Ok(None)` when
    /// this bus cannot tell (the default). Streams use it to notice a peer
    /// that died without closing (see [`crate::stream`], "Dead peers").
    async fn listeners(&self, _channel: &Channel) -> Result<Option<usize>> {
        Ok(None)
    }
}

/// The writing end of one subscriber's buffer, as a bus dispatches to it.
///
/// This is psrpc's slow-consumer policy, the same on every bus:
///
/// - a subscriber buffers up to `size` messages (the size it subscribed
///   with); a message that finds room is delivered at once;
/// - a subscriber whose buffer is full is *behind*. A bus whose shared
///   reader must never wait (Redis, NATS) lets it buffer up to `overflow`
///   more, so that a burst costs a subscriber that keeps reading nothing;
///   the local bus has no overflow and its publisher waits for room instead
///   ([`Sink::wait`]);
/// - a subscriber that took nothing for `stuck_after` while behind is
///   *stuck*: every message for it that does not fit its buffer is dropped
///   at once, until it reads again;
/// - a message that finds the buffer and the overflow full is dropped.
///
/// Every drop is counted in the bus's [`Drops`] (reason
/// [`DropReason::SlowConsumer`]) and logged rate-limited with the channel.
/// Nothing else is held for a subscriber, so a stuck one costs at most
/// `size + overflow` messages of memory, and dispatching never waits on it
/// (except the local bus's publisher, once, for at most `stuck_after`).
#[derive(Clone)]
pub struct Sink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    tx: mpsc::Sender<Bytes>,
    size: usize,
    stuck_after: Duration,
    /// Messages ever put in the buffer.
    pushed: AtomicU64,
    /// While behind: how many messages the reader had taken, and when that
    /// was first seen (no progress since).
    behind: Mutex<Option<(u64, Instant)>>,
}

/// What became of a message offered to a [`Sink`].
#[derive(Debug)]
pub enum Offer {
    /// In the subscriber's buffer.
    Taken,
    /// The buffer and its overflow are full but the subscriber is not stuck
    /// (yet): the message is given back, to wait for room
    /// ([`Sink::wait`]) or to drop ([`Sink::drop_full`]).
    Full(Bytes),
    /// Dropped for this subscriber (stuck), counted and logged.
    Dropped,
    /// The subscriber is gone: the message is given back.
    Gone(Bytes),
}

/// How many messages in all a subscriber of a networked bus may hold while
/// it is behind but still reading: what nats.go and async-nats allow one
/// subscription by default. A burst up to this costs a healthy subscriber
/// nothing; a stuck one holds at most this much.
pub const READER_PENDING_LIMIT: usize = 64 * 1024;

/// How long a subscriber of a networked bus may take nothing while behind
/// before it counts as stuck (and loses, at once, what does not fit its own
/// buffer). Long enough that a loaded but healthy process is not taken for
/// stuck; short enough that a stuck one stops growing within a second.
pub const READER_STUCK_AFTER: Duration = Duration::from_secs(1);

impl Sink {
    /// The buffer of a subscriber of a networked bus, whose shared reader
    /// never waits: `size` messages, an overflow up to
    /// [`READER_PENDING_LIMIT`] in all (at least `size` more), stuck after
    /// [`READER_STUCK_AFTER`].
    pub fn for_reader(size: usize) -> (Sink, mpsc::Receiver<Bytes>) {
        let size = size.max(1);
        let overflow = READER_PENDING_LIMIT.saturating_sub(size).max(size);
        Sink::new(size, overflow, READER_STUCK_AFTER)
    }

    /// A subscriber buffer of `size` messages (at least 1), `overflow` more
    /// while it is behind but reading, that counts as stuck after
    /// `stuck_after` without reading; and the receiving end for its
    /// [`Subscription`].
    pub fn new(
        size: usize,
        overflow: usize,
        stuck_after: Duration,
    ) -> (Sink, mpsc::Receiver<Bytes>) {
        let size = size.max(1);
        let (tx, rx) = mpsc::channel(size.saturating_add(overflow));
        let inner = SinkInner {
            tx,
            size,
            stuck_after,
            pushed: AtomicU64::new(0),
            behind: Mutex::new(None),
        };
        (
            Sink {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// How many messages are buffered.
    pub fn len(&self) -> usize {
        let tx = &self.inner.tx;
        tx.max_capacity() - tx.capacity()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the subscriber is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.tx.is_closed()
    }

    fn try_push(&self, msg: Bytes) -> Offer {
        match self.inner.tx.try_send(msg) {
            Ok(()) => {
                self.inner.pushed.fetch_add(1, Ordering::Relaxed);
                Offer::Taken
            }
            Err(mpsc::error::TrySendError::Full(b)) => Offer::Full(b),
            Err(mpsc::error::TrySendError::Closed(b)) => Offer::Gone(b),
        }
    }

    /// Delivers `msg` if the buffer (without the overflow) has room.
    fn offer_room(&self, msg: Bytes) -> Offer {
        if self.len() < self.inner.size {
            self.try_push(msg)
        } else {
            Offer::Full(msg)
        }
    }

    /// How long the subscriber has been behind without reading.
    fn stalled_for(&self) -> Duration {
        let taken = self
            .inner
            .pushed
            .load(Ordering::Relaxed)
            .saturating_sub(self.len() as u64);
        let now = Instant::now();
        let mut behind = self.inner.behind.lock().unwrap_or_else(|e| e.into_inner());
        match *behind {
            Some((t, since)) if t == taken => now.saturating_duration_since(since),
            _ => {
                *behind = Some((taken, now));
                Duration::ZERO
            }
        }
    }

    /// Whether a message offered now would be taken (room in the buffer, or
    /// in the overflow while not stuck).
    pub fn can_take(&self) -> bool {
        if self.is_closed() {
            return false;
        }
        let len = self.len();
        len < self.inner.size || (len < self.inner.tx.max_capacity() && !self.stuck())
    }

    /// Whether the subscriber is behind and took nothing for `stuck_after`.
    fn stuck(&self) -> bool {
        self.stalled_for() >= self.inner.stuck_after
    }

    /// Offers `msg` without waiting (see the policy above).
    pub fn offer(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        let msg = match self.offer_room(msg) {
            Offer::Full(b) => b,
            other => return other,
        };
        if self.stuck() {
            drops.record(
                DropReason::SlowConsumer,
                channel,
                &format_args!("subscriber stuck for {:?}", self.inner.stuck_after),
            );
            return Offer::Dropped;
        }
        self.try_push(msg)
    }

    /// Offers `msg` without waiting, dropping it (counted) when it does not
    /// fit: what a bus's shared reader does.
    pub fn offer_or_drop(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        match self.offer(msg, drops, channel) {
            Offer::Full(_) => {
                self.drop_full(drops, channel);
                Offer::Dropped
            }
            other => other,
        }
    }

    /// Counts a message dropped because the buffer and overflow were full.
    pub fn drop_full(&self, drops: &Drops, channel: &str) {
        drops.record(
            DropReason::SlowConsumer,
            channel,
            &format_args!("subscriber buffer full ({} messages)", self.len()),
        );
    }

    /// After [`Offer::Full`]: waits for room until the subscriber counts as
    /// stuck, then drops `msg` for it (counted). Only for a publisher that
    /// may wait (the local bus); never in a shared reader.
    pub async fn wait(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        let left = self.inner.stuck_after.saturating_sub(self.stalled_for());
        match tokio::time::timeout(left, self.inner.tx.send(msg)).await {
            Ok(Ok(())) => {
                self.inner.pushed.fetch_add(1, Ordering::Relaxed);
                Offer::Taken
            }
            Ok(Err(e)) => Offer::Gone(e.0),
            Err(_) => {
                drops.record(
                    DropReason::SlowConsumer,
                    channel,
                    &format_args!("subscriber stuck for {:?}", self.inner.stuck_after),
                );
                Offer::Dropped
            }
        }
    }
}

/// The subscribers of one channel in one bus: fan-out ones (every one gets
/// every message) and queue members (one gets each message, in turn), with
/// the dispatch every bus uses (see [`Sink`] for the slow-consumer policy).
///
/// A bus keeps one per channel, replaced whole (copy on write) when a
/// subscriber comes or goes, so dispatching reads it without a lock.
#[derive(Default, Clone)]
pub struct Members {
    fanout: Vec<(u64, Sink)>,
    queue: Vec<(u64, Sink)>,
    rr: Arc<AtomicUsize>,
}

impl Members {
    /// Adds subscriber `id`, as a queue member when `queue`.
    pub fn add(&mut self, id: u64, sink: Sink, queue: bool) {
        if queue {
            self.queue.push((id, sink));
        } else {
            self.fanout.push((id, sink));
        }
    }

    /// Removes subscriber `id`.
    pub fn remove(&mut self, id: u64) {
        self.fanout.retain(|(i, _)| *i != id);
        self.queue.retain(|(i, _)| *i != id);
    }

    /// Whether there is no subscriber.
    pub fn is_empty(&self) -> bool {
        self.fanout.is_empty() && self.queue.is_empty()
    }

    /// How many subscribers there are, fan-out and queue.
    pub fn len(&self) -> usize {
        self.fanout.len() + self.queue.len()
    }

    /// Whether there are fan-out subscribers.
    pub fn has_fanout(&self) -> bool {
        !self.fanout.is_empty()
    }

    /// Whether there are queue members.
    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether a queue message offered now would be taken by a member (see
    /// [`Sink::can_take`]). A bus that must do work before delivering a
    /// queue message (Redis takes a lock) asks first, so that a stuck
    /// member neither costs that work nor wins a message it would drop.
    pub fn queue_can_take(&self) -> bool {
        self.queue.iter().any(|(_, s)| s.can_take())
    }

    /// Gives `msg` to every fan-out subscriber, without waiting.
    pub fn deliver_fanout(&self, msg: &Bytes, drops: &Drops, channel: &str) {
        for (_, sink) in &self.fanout {
            sink.offer_or_drop(msg.clone(), drops, channel);
        }
    }

    /// Gives `msg` to one queue member without waiting: in turn, preferring
    /// a member with room in its buffer, then one behind but not stuck with
    /// room in its overflow; if all are full it is dropped (counted).
    /// `Err(msg)` when there is no member left.
    pub fn deliver_queue(
        &self,
        msg: Bytes,
        drops: &Drops,
        channel: &str,
    ) -> std::result::Result<(), Bytes> {
        match pick_queue(&self.queue, &self.rr, msg, drops, channel) {
            QueuePick::Done => Ok(()),
            QueuePick::Full(sink, _) => {
                sink.drop_full(drops, channel);
                Ok(())
            }
            QueuePick::NoMember(msg) => Err(msg),
        }
    }

    /// Gives `msg` to every subscriber (fan-out, and one queue member)
    /// without waiting; `Err(msg)` when there are queue members but all
    /// are gone.
    pub fn deliver(
        &self,
        msg: Bytes,
        drops: &Drops,
        channel: &str,
    ) -> std::result::Result<(), Bytes> {
        self.deliver_fanout(&msg, drops, channel);
        if self.queue.is_empty() {
            return Ok(());
        }
        self.deliver_queue(msg, drops, channel)
    }
}

/// What [`pick_queue`] did with a queue message.
enum QueuePick<'a> {
    /// Delivered or dropped (counted).
    Done,
    /// Every live member is full, none stuck: the first such one and the message.
    Full(&'a Sink, Bytes),
    /// Every member is gone.
    NoMember(Bytes),
}

fn pick_queue<'a>(
    sinks: &'a [(u64, Sink)],
    rr: &AtomicUsize,
    msg: Bytes,
    drops: &Drops,
    channel: &str,
) -> QueuePick<'a> {
    let n = sinks.len();
    if n == 0 {
        return QueuePick::NoMember(msg);
    }
    let start = if n > 1 {
        rr.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    let mut msg = msg;
    // First a member with room in its buffer, in turn.
    let mut live = 0;
    for k in 0..n {
        let sink = &sinks[(start + k) % n].1;
        msg = match sink.offer_room(msg) {
            Offer::Taken | Offer::Dropped => return QueuePick::Done,
            Offer::Full(b) => {
                live += 1;
                b
            }
            Offer::Gone(b) => b,
        };
    }
    if live == 0 {
        return QueuePick::NoMember(msg);
    }
    // Then one that is behind but not stuck, in its overflow.
    let mut first_full = None;
    for k in 0..n {
        let sink = &sinks[(start + k) % n].1;
        if sink.is_closed() || sink.stuck() {
            continue;
        }
        msg = match sink.try_push(msg) {
            Offer::Taken | Offer::Dropped => return QueuePick::Done,
            Offer::Full(b) => {
                first_full.get_or_insert(sink);
                b
            }
            Offer::Gone(b) => b,
        };
    }
    match first_full {
        Some(sink) => QueuePick::Full(sink, msg),
        None => {
            drops.record(
                DropReason::SlowConsumer,
                channel,
                &"every queue member stuck",
            );
            QueuePick::Done
        }
    }
}

/// Receives the messages of a handler subscription.
pub type Handler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Keeps a handler subscription alive; dropping it unsubscribes.
pub struct HandlerSubscription {
    _guard: Box<dyn Send + Sync>,
}

impl HandlerSubscription {
    /// A subscription that ends when `guard` is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        HandlerSubscription {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for HandlerSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerSubscription")
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl<B: MessageBus + ?Sized> MessageBus for Arc<B> {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        (**self).publish(channel, msg).await
    }
    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        (**self).subscribe(channel, size).await
    }
    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        (**self).subscribe_queue(channel, size).await
    }
    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        (**self)
            .subscribe_handler(channel, size, queue, handler)
            .await
    }
    fn drops(&self) -> &Drops {
        (**self).drops()
    }
    fn compression(&self) -> &CompressionOptions {
        (**self).compression()
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        (**self).check_channel(channel)
    }

    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        (**self).listeners(channel).await
    }
}

/// A shared, type-erased bus, as the runtime holds it.
pub type DynBus = Arc<dyn MessageBus>;

type Closer = Box<dyn FnOnce() + Send + Sync>;

/// The receiving end of a bus subscription: raw `Msg` bytes, in the order
/// the bus delivered them. Dropping it (or [`Subscription::close`])
/// unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Bytes>,
    closer: Option<Closer>,
    closed: bool,
}

impl Subscription {
    /// A subscription reading from `rx`; `on_close` runs once when it is
    /// closed or dropped (a bus unsubscribes there).
    pub fn new(rx: mpsc::Receiver<Bytes>, on_close: impl FnOnce() + Send + Sync + 'static) -> Self {
        Subscription {
            rx,
            closer: Some(Box::new(on_close)),
            closed: false,
        }
    }

    /// The next message; `None` once the subscription is closed.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if self.closed {
            return None;
        }
        self.rx.recv().await
    }

    /// The next message if one is buffered. `Err(Disconnected)` once closed.
    pub fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        if self.closed {
            return Err(mpsc::error::TryRecvError::Disconnected);
        }
        self.rx.try_recv()
    }

    /// Unsubscribes. Messages still buffered are discarded; reads return `None`.
    pub fn close(&mut self) {
        self.closed = true;
        self.rx.close();
        if let Some(c) = self.closer.take() {
            c();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many messages are buffered, waiting to be read.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is buffered.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The most messages this subscription ever buffers: what arrives while
    /// it holds that many is dropped for it.
    pub fn capacity(&self) -> usize {
        self.rx.max_capacity()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(c) = self.closer.take() {
            c();
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Bytes>> {
        if self.closed {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("closed", &self.closed)
            .finish()
    }
}

/// The in-process bus: every client and server in one process that share a
/// `LocalBus` (clones share it) reach each other.
///
/// Messages are encoded to bytes as on every other bus, so nothing is shared
/// between peers but the bytes.
///
/// # Slow consumers
///
/// Every subscription has a bounded buffer (`size` messages); the policy is
/// every psrpc bus's (see [`Sink`]), with one difference: publishing is
/// synchronous here, so instead of an overflow the *publisher* waits for a
/// full subscriber to make room, for at most the *slow-consumer timeout*
/// (default 100 ms, see [`LocalBus::with_slow_consumer_timeout`]) counted
/// from when that subscriber last read. Publishing first offers the message
/// to every subscriber without waiting, so subscribers with room get it at
/// once whatever the others do; no lock is held while waiting, so other
/// publishers and other channels are never held up. A subscriber that has
/// not read for the timeout is *stuck*: what does not fit its buffer is
/// dropped for it at once (counted in [`MessageBus::drops`], logged
/// rate-limited), so a stuck subscriber costs its publishers one timeout,
/// not one per message, and holds at most `size` messages. A consumer that
/// keeps reading loses nothing. (The Go local bus blocks the publisher for
/// as long as the subscriber is full; this bus bounds that wait.)
///
/// A queue message goes to the members in turn (round-robin); a full member is
/// skipped in favour of one with room before any waiting happens.
///
/// Runtime handlers ([`MessageBus::subscribe_handler`]) are called in the
/// publisher's task and have no buffer.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<LocalInner>,
    compression: CompressionOptions,
}

struct LocalInner {
    channels: RwLock<HashMap<String, Arc<LocalSubs>>>,
    next_id: AtomicU64,
    drops: Drops,
    slow_timeout: Duration,
}

/// The subscribers of one local channel.
#[derive(Default, Clone)]
struct LocalSubs {
    /// Subscriptions with a buffer.
    chans: Members,
    /// Handlers, called in the publisher's task: no hop, never full.
    fanout_handlers: Vec<(u64, Handler)>,
    queue_handlers: Vec<(u64, Handler)>,
    rr: Arc<AtomicUsize>,
}

impl LocalSubs {
    fn is_empty(&self) -> bool {
        self.chans.is_empty() && self.fanout_handlers.is_empty() && self.queue_handlers.is_empty()
    }
}

/// What a local subscriber is.
enum LocalSink {
    Chan(Sink),
    Handler(Handler),
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::with_slow_consumer_timeout(Duration::from_millis(100))
    }

    /// A new bus whose publishers give a full subscriber up to `timeout`
    /// since it last read to make room, before it counts as stuck and
    /// messages are dropped for it.
    pub fn with_slow_consumer_timeout(timeout: Duration) -> Self {
        LocalBus {
            inner: Arc::new(LocalInner {
                channels: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                drops: Drops::default(),
                slow_timeout: timeout,
            }),
            compression: CompressionOptions::DEFAULT,
        }
    }

    /// A handle on the same bus whose peers publish and read with
    /// `compression` (see [`crate::codec`]). Other handles keep their own
    /// options, so peers of one local bus can differ, as on a network.
    pub fn with_compression(mut self, compression: CompressionOptions) -> Self {
        self.compression = compression;
        self
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.inner.drops.total()
    }

    fn add(&self, channel: &Channel, size: usize, queue: bool) -> Subscription {
        let (sink, rx) = Sink::new(size, 0, self.inner.slow_timeout);
        let remove = self.add_sink(channel, LocalSink::Chan(sink), queue);
        Subscription::new(rx, remove)
    }

    /// Adds a sink; returns what removes it.
    fn add_sink(
        &self,
        channel: &Channel,
        sink: LocalSink,
        queue: bool,
    ) -> impl FnOnce() + Send + Sync + 'static {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let key = channel.legacy.clone();
        {
            let mut map = self
                .inner
                .channels
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut subs = map.get(&key).map(|s| (**s).clone()).unwrap_or_default();
            match (sink, queue) {
                (LocalSink::Chan(s), q) => subs.chans.add(id, s, q),
                (LocalSink::Handler(h), false) => subs.fanout_handlers.push((id, h)),
                (LocalSink::Handler(h), true) => subs.queue_handlers.push((id, h)),
            }
            map.insert(key.clone(), Arc::new(subs));
        }
        let inner = Arc::downgrade(&self.inner);
        move || {
            let Some(inner) = inner.upgrade() else { return };
            let mut map = inner.channels.write().unwrap_or_else(|e| e.into_inner());
            if let Some(cur) = map.get(&key) {
                let mut subs = (**cur).clone();
                subs.chans.remove(id);
                subs.fanout_handlers.retain(|(i, _)| *i != id);
                subs.queue_handlers.retain(|(i, _)| *i != id);
                if subs.is_empty() {
                    map.remove(&key);
                } else {
                    map.insert(key, Arc::new(subs));
                }
            }
        }
    }
}

#[async_trait]
impl MessageBus for LocalBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        let subs = {
            let map = self
                .inner
                .channels
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match map.get(&channel.legacy) {
                Some(s) => s.clone(),
                None => return Ok(()),
            }
        };
        let (drops, name) = (&self.inner.drops, channel.legacy.as_str());
        for (_, h) in &subs.fanout_handlers {
            h(msg.clone());
        }
        let mut slow: Vec<(&Sink, Bytes)> = Vec::new();
        for (_, sink) in &subs.chans.fanout {
            if let Offer::Full(b) = sink.offer(msg.clone(), drops, name) {
                slow.push((sink, b));
            }
        }
        let (nh, nc) = (subs.queue_handlers.len(), subs.chans.queue.len());
        if nh > 0 && (nc == 0 || subs.rr.fetch_add(1, Ordering::Relaxed) % (nh + nc) < nh) {
            let i = if nh > 1 {
                subs.rr.fetch_add(1, Ordering::Relaxed) % nh
            } else {
                0
            };
            (subs.queue_handlers[i].1)(msg.clone());
        } else if nc > 0
            && let QueuePick::Full(sink, b) =
                pick_queue(&subs.chans.queue, &subs.chans.rr, msg.clone(), drops, name)
        {
            slow.push((sink, b));
        }
        for (sink, b) in slow {
            sink.wait(b, drops, name).await;
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        Ok(self.add(channel, size, false))
    }

    fn drops(&self) -> &Drops {
        &self.inner.drops
    }

    fn compression(&self) -> &CompressionOptions {
        &self.compression
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        Ok(self.add(channel, size, true))
    }

    /// The subscriptions this bus holds for `channel` (every peer of a
    /// local bus is in it).
    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        let map = self
            .inner
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner());
        Ok(Some(map.get(&channel.legacy).map_or(0, |s| {
            s.chans.len() + s.fanout_handlers.len() + s.queue_handlers.len()
        })))
    }

    async fn subscribe_handler(
        &self,
        channel: &Channel,
        _size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        struct Remove(Option<Box<dyn FnOnce() + Send + Sync>>);
        impl Drop for Remove {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
        let remove = self.add_sink(channel, LocalSink::Handler(handler), queue);
        Ok(HandlerSubscription::new(Remove(Some(Box::new(remove)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    /// A reader that never waits: the buffer, then the overflow, then drops,
    /// each counted; what is held never exceeds size + overflow.
    #[test]
    fn overflow_then_drop_never_waits() {
        let drops = Drops::default();
        let (sink, rx) = Sink::new(2, 2, Duration::MAX);
        let got: Vec<_> = (0..10)
            .map(|i| matches!(sink.offer_or_drop(msg(i), &drops, "c"), Offer::Taken))
            .collect();
        assert_eq!(got.iter().filter(|t| **t).count(), 4);
        assert_eq!((rx.len(), rx.max_capacity()), (4, 4));
        assert_eq!(drops.count(DropReason::SlowConsumer), 6);
        drop(rx);
        assert!(matches!(
            sink.offer_or_drop(msg(0), &drops, "c"),
            Offer::Gone(_)
        ));
    }

    /// A subscriber that reads nothing for `stuck_after` while full loses
    /// messages at once; one read makes it a live subscriber again.
    #[tokio::test]
    async fn stuck_after_timeout_until_read() {
        let drops = Drops::default();
        let (sink, mut rx) = Sink::new(1, 0, Duration::from_millis(20));
        assert!(matches!(sink.offer(msg(0), &drops, "c"), Offer::Taken));
        let Offer::Full(b) = sink.offer(msg(1), &drops, "c") else {
            panic!("full, not yet stuck");
        };
        assert!(matches!(sink.wait(b, &drops, "c").await, Offer::Dropped));
        // Stuck now: dropped without waiting.
        assert!(matches!(sink.offer(msg(2), &drops, "c"), Offer::Dropped));
        assert_eq!(drops.count(DropReason::SlowConsumer), 2);
        assert_eq!(rx.recv().await.unwrap(), msg(0));
        assert!(matches!(sink.offer(msg(3), &drops, "c"), Offer::Taken));
        // Full again, but it read: it gets time again.
        assert!(matches!(sink.offer(msg(4), &drops, "c"), Offer::Full(_)));
    }

    /// Queue members in turn; a full member is skipped for one with room;
    /// all gone gives the message back.
    #[test]
    fn queue_round_robin_prefers_room() {
        let drops = Drops::default();
        let mut m = Members::default();
        let (a, mut ra) = Sink::new(1, 0, Duration::MAX);
        let (b, mut rb) = Sink::new(10, 0, Duration::MAX);
        m.add(1, a, true);
        m.add(2, b, true);
        for i in 0..6 {
            m.deliver(msg(i), &drops, "q").unwrap();
        }
        let (mut na, mut nb) = (0, 0);
        while ra.try_recv().is_ok() {
            na += 1;
        }
        while rb.try_recv().is_ok() {
            nb += 1;
        }
        assert_eq!((na, nb), (1, 5));
        assert_eq!(drops.total(), 0);
        drop((ra, rb));
        assert!(m.deliver(msg(9), &drops, "q").is_err());
    }
}
