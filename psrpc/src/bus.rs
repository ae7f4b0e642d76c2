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
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

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

/// What became of a delivery into a full subscriber buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowDelivery {
    /// Room was made in time: delivered.
    Delivered,
    /// Still full at the timeout: dropped for this subscriber, counted, logged.
    Dropped,
    /// The subscriber is gone.
    Closed,
}

/// The second half of every psrpc bus's slow-consumer policy (see
/// [`LocalBus`]): after `try_send` found `tx` full, wait up to `timeout` for
/// room; if there is still none, drop the message for this subscriber alone,
/// count it in `drops` (which logs it, rate-limited, with `channel`).
pub async fn deliver_within(
    tx: &mpsc::Sender<Bytes>,
    msg: Bytes,
    timeout: Duration,
    drops: &Drops,
    channel: &str,
) -> SlowDelivery {
    match tokio::time::timeout(timeout, tx.send(msg)).await {
        Ok(Ok(())) => SlowDelivery::Delivered,
        Ok(Err(_)) => SlowDelivery::Closed,
        Err(_) => {
            drops.record(
                DropReason::SlowConsumer,
                channel,
                &format_args!("subscriber full for {timeout:?}"),
            );
            SlowDelivery::Dropped
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
/// Every subscription has a bounded buffer (`size` messages). Publishing first
/// offers the message to every subscriber without waiting, so subscribers with
/// room get it at once whatever the others do. A subscriber whose buffer is
/// full then gets up to the *slow-consumer timeout* (default 100 ms, see
/// [`LocalBus::with_slow_consumer_timeout`]) to make room, during which only
/// that publish waits; no lock is held, so other publishers and unrelated
/// channels are never held up. If it still has no room, the message is dropped
/// for that subscriber alone, logged with `tracing` at warn level and counted
/// in [`LocalBus::dropped`]. Memory stays bounded; a consumer that keeps up
/// loses nothing. (The Go local bus blocks the publisher for as long as the
/// subscriber is full, quirk Q12; this bus bounds that wait.)
///
/// A queue message goes to the members in turn (round-robin); a full member is
/// skipped in favour of one with room before any waiting happens.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<LocalInner>,
    compression: CompressionOptions,
}

struct LocalInner {
    channels: RwLock<HashMap<String, Arc<Subscribers>>>,
    next_id: AtomicU64,
    drops: Drops,
    slow_timeout: Duration,
}

#[derive(Clone)]
enum Sink {
    Chan(mpsc::Sender<Bytes>),
    /// Called in the publisher's task: no hop, never full.
    Handler(Handler),
}

#[derive(Default, Clone)]
struct Subscribers {
    fanout: Vec<(u64, Sink)>,
    queue: Vec<(u64, Sink)>,
    rr: Arc<AtomicUsize>,
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

    /// A new bus that gives a full subscriber `timeout` to make room before a
    /// message is dropped for it.
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
        let (tx, rx) = mpsc::channel(size.max(1));
        let remove = self.add_sink(channel, Sink::Chan(tx), queue);
        Subscription::new(rx, remove)
    }

    /// Adds a sink; returns what removes it.
    fn add_sink(
        &self,
        channel: &Channel,
        sink: Sink,
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
            if queue {
                subs.queue.push((id, sink));
            } else {
                subs.fanout.push((id, sink));
            }
            map.insert(key.clone(), Arc::new(subs));
        }
        let inner = Arc::downgrade(&self.inner);
        move || {
            let Some(inner) = inner.upgrade() else { return };
            let mut map = inner.channels.write().unwrap_or_else(|e| e.into_inner());
            if let Some(cur) = map.get(&key) {
                let mut subs = (**cur).clone();
                subs.fanout.retain(|(i, _)| *i != id);
                subs.queue.retain(|(i, _)| *i != id);
                if subs.fanout.is_empty() && subs.queue.is_empty() {
                    map.remove(&key);
                } else {
                    map.insert(key, Arc::new(subs));
                }
            }
        }
    }

    async fn deliver_slow(&self, channel: &Channel, tx: &mpsc::Sender<Bytes>, msg: Bytes) {
        let i = &self.inner;
        deliver_within(tx, msg, i.slow_timeout, &i.drops, &channel.legacy).await;
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
        let mut slow: Vec<&mpsc::Sender<Bytes>> = Vec::new();
        for (_, sink) in &subs.fanout {
            match sink {
                Sink::Chan(tx) => {
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg.clone()) {
                        slow.push(tx);
                    }
                }
                Sink::Handler(h) => h(msg.clone()),
            }
        }
        let n = subs.queue.len();
        if n > 0 {
            let start = subs.rr.fetch_add(1, Ordering::Relaxed);
            let mut full = None;
            let mut delivered = false;
            for k in 0..n {
                let tx = match &subs.queue[(start + k) % n].1 {
                    Sink::Chan(tx) => tx,
                    Sink::Handler(h) => {
                        h(msg.clone());
                        delivered = true;
                        break;
                    }
                };
                match tx.try_send(msg.clone()) {
                    Ok(()) => {
                        delivered = true;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        full.get_or_insert(tx);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            if let (false, Some(tx)) = (delivered, full) {
                slow.push(tx);
            }
        }
        for tx in slow {
            self.deliver_slow(channel, tx, msg.clone()).await;
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
        Ok(Some(
            map.get(&channel.legacy)
                .map_or(0, |s| s.fanout.len() + s.queue.len()),
        ))
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
        let remove = self.add_sink(channel, Sink::Handler(handler), queue);
        Ok(HandlerSubscription::new(Remove(Some(Box::new(remove)))))
    }
}
