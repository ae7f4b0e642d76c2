//! The bus handle: [`MessageBus`] over the writer, the pub/sub manager and
//! the subscriber map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use psrpc::bus::{Channel, MessageBus, Sink, Subscription};
use psrpc::{ErrorCode, Result};
use tokio::sync::{mpsc, oneshot};

use crate::builder::RedisBusBuilder;
use crate::error::Error;
use crate::publish::{self, Item};
use crate::pubsub::{Command, SUBSCRIBE_TIMEOUT};
use crate::shared::Shared;
use crate::topology::Managed;

/// The psrpc bus over Redis pub/sub. Clones share the connections.
///
/// Made by [`RedisBus::builder`] (or [`RedisBus::connect`]); see the
/// [crate documentation](crate) for semantics.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) publish_tx: mpsc::Sender<Item>,
    /// The command connection, for `PUBSUB NUMSUB`; `None` in a cluster,
    /// where that command only counts one node's subscribers.
    pub(crate) numsub: Option<Arc<Managed>>,
    pub(crate) cmd_tx: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) next_id: AtomicU64,
    pub(crate) prefix: String,
    pub(crate) compression: psrpc::CompressionOptions,
    pub(crate) max_channel: usize,
    /// The writer and the manager, awaited by [`RedisBus::close`].
    pub(crate) tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.inner.prefix)
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
    /// A builder taking every option before connecting.
    pub fn builder() -> RedisBusBuilder {
        RedisBusBuilder::default()
    }

    /// Connects to the Redis at `url` with the default options:
    /// `RedisBus::builder().connect(url)`, see
    /// [`RedisBusBuilder::connect`].
    pub async fn connect(url: &str) -> Result<RedisBus, Error> {
        Self::builder().connect(url).await
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        RedisBus {
            inner: Arc::new(inner),
        }
    }

    /// The largest message this bus publishes or delivers.
    pub fn max_message_size(&self) -> usize {
        self.inner.shared.max_message
    }

    /// The longest channel name (prefix included) this bus uses.
    pub fn max_channel_len(&self) -> usize {
        self.inner.max_channel
    }

    /// The channel-name prefix of this bus (empty by default).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the pub/sub connection to Redis is up (and its channels
    /// subscribed). False once the bus is closed.
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

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.drops.total()
    }

    /// Whether [`close`](Self::close) was called on this bus (any handle).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.is_cancelled()
    }

    /// Closes the bus (every clone of it): sends what is queued for
    /// publishing, unsubscribes every channel (its subscriptions end),
    /// stops the bus's tasks and drops its connections. Later publishes,
    /// subscribes and `listeners` fail with [`Error::Closed`]
    /// (`failed_precondition`). Returns once all that is done; closing again
    /// returns at once.
    ///
    /// Publishes that fail while closing (Redis unreachable) are dropped and
    /// counted as any other.
    pub async fn close(&self) {
        let mut tasks = self.inner.tasks.lock().await;
        let shared = &self.inner.shared;
        if tasks.is_empty() {
            return;
        }
        // From now on calls fail; the manager unsubscribes and stops.
        shared.closed.cancel();
        // Publishes queued so far are sent; later ones are refused.
        let (done, flushed) = oneshot::channel();
        if self.inner.publish_tx.send(Item::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        for task in tasks.drain(..) {
            let _ = task.await;
        }
        // Whatever a subscribe racing with the close added.
        shared.routes().clear();
        shared.connected.send_replace(false);
        tracing::debug!("redis bus: closed");
    }

    /// The Redis channel of `channel`: the prefix, then the legacy name.
    fn name(&self, channel: &Channel) -> String {
        format!("{}{}", self.inner.prefix, channel.legacy)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
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
        self.check_open()?;
        let key = self.name(channel);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self.inner.shared.routes();
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
            let mut map = shared.routes();
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
        let channel = key.clone();
        self.inner
            .cmd_tx
            .send(Command::Subscribe { channel, reply })
            .map_err(|_| Error::Closed)?;
        let acked = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ack).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::SubscribeTimeout { channel: key }),
        };
        acked?;
        Ok(remove.0.take().expect("set above"))
    }

    async fn add_chan(&self, channel: &Channel, size: usize, queue: bool) -> Result<Subscription> {
        // A burst is buffered for a subscriber that keeps reading; one that
        // stops is cut off: see the crate docs (slow consumers).
        let (sink, rx) = Sink::for_reader(size);
        let remove = self.add(channel, queue, sink).await?;
        Ok(Subscription::new(rx, remove))
    }
}

#[async_trait]
impl MessageBus for RedisBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        self.check_channel(channel)?;
        self.check_open()?;
        let shared = &self.inner.shared;
        let max = shared.max_message;
        if msg.len() > max {
            return Err(psrpc::Error::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "redis: message of {} bytes is larger than the bus's maximum of {max} bytes",
                    msg.len()
                ),
            ));
        }
        if !*shared.connected.borrow() {
            let cause = std::sync::Arc::new(shared.last_error());
            return Err(Error::Disconnected { cause }.into());
        }
        Ok(publish::enqueue(&self.inner.publish_tx, self.name(channel), msg).await?)
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
        self.add_chan(channel, size, false).await
    }

    fn drops(&self) -> &psrpc::drops::Drops {
        &self.inner.shared.drops
    }

    fn compression(&self) -> &psrpc::CompressionOptions {
        &self.inner.compression
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        let len = self.inner.prefix.len() + channel.legacy.len();
        if len > self.inner.max_channel {
            return Err(psrpc::Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "redis: channel name of {len} bytes is longer than the bus's limit of {} bytes: {}",
                    self.inner.max_channel,
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
        self.check_open()?;
        let Some(conn) = &self.inner.numsub else {
            return Ok(None);
        };
        let name = self.name(channel);
        let counts: Vec<(String, usize)> = conn
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(&name))
            .await
            .map_err(|source| Error::Command {
                command: "PUBSUB NUMSUB",
                source,
            })?;
        Ok(Some(counts.first().map_or(0, |(_, n)| *n)))
    }
}
