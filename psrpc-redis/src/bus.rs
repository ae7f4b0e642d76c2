//! [`RedisBus`]: psrpc's generic bus over the [`RedisTransport`].

use std::sync::atomic::Ordering;

use psrpc::bus::{AsBus, Bus};

use crate::builder::RedisBusBuilder;
use crate::error::Error;
use crate::transport::RedisTransport;

/// The psrpc bus over Redis pub/sub. Clones share the connections.
///
/// A [`MessageBus`](psrpc::MessageBus) (through [`AsBus`]): psrpc's
/// generic [`Bus`] holds the subscribers and dispatches to them, the
/// [`RedisTransport`] under it talks to Redis. Made by
/// [`RedisBus::builder`] (or [`RedisBus::connect`]); see the
/// [crate documentation](crate) for semantics.
#[derive(Clone)]
pub struct RedisBus {
    bus: Bus<RedisTransport>,
}

impl AsBus for RedisBus {
    type Transport = RedisTransport;

    fn as_bus(&self) -> &Bus<RedisTransport> {
        &self.bus
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix())
            .field("dropped", &self.dropped())
            .finish()
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

    pub(crate) fn new(transport: RedisTransport, compression: psrpc::CompressionOptions) -> Self {
        RedisBus {
            bus: Bus::from_transport(transport, compression),
        }
    }

    fn transport(&self) -> &RedisTransport {
        self.bus.transport()
    }

    /// The largest message this bus publishes or delivers.
    pub fn max_message_size(&self) -> usize {
        self.transport().shared.max_message
    }

    /// The longest channel name (prefix included) this bus uses.
    pub fn max_channel_len(&self) -> usize {
        self.transport().max_channel
    }

    /// The channel-name prefix of this bus (empty by default).
    pub fn prefix(&self) -> &str {
        &self.transport().prefix
    }

    /// Whether the pub/sub connection to Redis is up (and its channels
    /// subscribed). False once the bus is closed.
    pub fn is_connected(&self) -> bool {
        *self.transport().shared.connected.borrow()
    }

    /// Follows [`is_connected`](Self::is_connected).
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.transport().shared.connected.subscribe()
    }

    /// How many times the pub/sub connection was re-established since the
    /// bus was made.
    pub fn reconnects(&self) -> u64 {
        self.transport().shared.reconnects.load(Ordering::Relaxed)
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`](psrpc::MessageBus::drops) for the counts by
    /// reason).
    pub fn dropped(&self) -> u64 {
        self.bus.dropped()
    }

    /// Whether [`close`](Self::close) was called on this bus (any clone).
    pub fn is_closed(&self) -> bool {
        self.bus.is_closed()
    }

    /// Closes the bus (every clone of it): unsubscribes every channel (its
    /// subscriptions end once drained), sends what is queued for
    /// publishing, stops the bus's tasks and drops its connections. Later
    /// publishes, subscribes and `listeners` fail with `unavailable`
    /// ("bus closed"). Returns once all that is done; closing again returns
    /// at once.
    ///
    /// Publishes that fail while closing (Redis unreachable) are dropped and
    /// counted as any other.
    pub async fn close(&self) -> psrpc::Result<()> {
        self.bus.close().await
    }
}
