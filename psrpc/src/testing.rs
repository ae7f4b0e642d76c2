//! Bus wrappers for tests (cargo feature `testing`): intercept, delay and
//! lose messages between psrpc clients and servers; and [`CallCounter`],
//! an interceptor that counts a client's calls and their outcomes.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use psrpc::testing::{FailureRate, LaggyBus, TestBus, UnreliableBus};
//! use psrpc::{ClientOptions, LocalBus, RpcClient, RpcServer, ServerOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> psrpc::Result<()> {
//! let local = LocalBus::new();
//!
//! // Every node sees every other 20 ms away; each node wraps the shared bus
//! // with its own id.
//! let latency = |_from: &str, _to: &str| Duration::from_millis(20);
//! let server = RpcServer::new(
//!     LaggyBus::new(local.clone(), "server", latency),
//!     "my_service",
//!     ServerOptions::default(),
//! ).await?;
//!
//! // The client also loses what it receives while `loss` says so.
//! let loss = Arc::new(FailureRate::new(0.0));
//! let client_bus = LaggyBus::new(local.clone(), "client", latency);
//! let client_bus = UnreliableBus::new(client_bus, loss.clone());
//! let client = RpcClient::new(client_bus, "my_service", ClientOptions::default()).await?;
//! loss.set(1.0); // an outage: calls now fail (`unavailable` when no server claims them)
//! loss.set(0.0); // and recovery
//!
//! // Or intercept by hand: drop every message published on one channel.
//! let bus = TestBus::new(local).publish_interceptor(|channel, msg, next| async move {
//!     if channel.legacy == "dropped" {
//!         Ok(())
//!     } else {
//!         next.publish(channel, msg).await
//!     }
//! });
//! # drop((server, client, bus));
//! # Ok(())
//! # }
//! ```
//!
//! * [`TestBus`] wraps any [`MessageBus`] with *publish interceptors* (see,
//!   alter, delay, drop or re-wrap outgoing messages) and *subscribe
//!   interceptors* (transform the raw byte stream of each subscription: drop,
//!   delay, reorder), as Go psrpc's test bus.
//! * [`LaggyBus`] simulates latency per link between named nodes (section 7.2).
//! * [`UnreliableBus`] loses a fraction of received messages, deterministically
//!   (section 7.3).
//!
//! The wrappers nest (`UnreliableBus::new(LaggyBus::new(..), ..)`), and one
//! [`TestBus`] can carry several of them ([`TestBus::laggy`],
//! [`TestBus::unreliable`]) beside hand-written interceptors.
//!
//! What the interceptors see are the bytes the runtime hands to the bus: an
//! encoded `Msg` envelope (decode it with [`wire::decode_msg`](crate::protocol::wire::decode_msg)),
//! where Go's interceptors see the message before serialization.

mod counter;
mod laggy;
mod unreliable;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::bus::{Channel, DynBus, Handler, HandlerSubscription, MessageBus, RawSubscription};
use crate::error::Result;

pub use counter::CallCounter;
pub use laggy::{LAGGY_TYPE_URL, LaggyBus, LaggyMessage, LatencyFn};
pub use unreliable::{FailureRate, UnreliableBus};

/// The raw messages of one subscription, as a subscribe interceptor sees
/// and returns them: encoded `Msg` envelopes in delivery order. The stream
/// ending closes the subscription.
pub type RawStream = BoxStream<'static, Bytes>;

/// What a subscribe interceptor is told about the subscription it wraps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeInfo {
    /// The channel subscribed to.
    pub channel: Channel,
    /// A queue subscription (one member of the queue gets each message)
    /// rather than a fan-out one.
    pub queue: bool,
    /// The buffer size the subscriber asked for.
    pub size: usize,
}

type PublishFn =
    Arc<dyn Fn(Channel, Bytes, PublishNext) -> BoxFuture<'static, Result<()>> + Send + Sync>;
type SubscribeFn = Arc<dyn Fn(&SubscribeInfo, RawStream) -> RawStream + Send + Sync>;

#[derive(Clone)]
struct Chain {
    bus: DynBus,
    publish: Vec<PublishFn>,
    subscribe: Vec<SubscribeFn>,
}

/// A bus wrapper with publish and subscribe interceptors (as Go psrpc's test bus
/// section 7.1).
///
/// Interceptors run in the order they were added: the first added is the
/// outermost. A publish passes through every publish interceptor in turn
/// (each decides whether, when and what to hand to the next) before reaching
/// the wrapped bus. Every subscription, fan-out or queue, also those the
/// runtime makes through [`MessageBus::subscribe_handler`], reads the wrapped
/// bus's raw stream through every subscribe interceptor: the last added sees
/// it first, the first added produces what the subscriber gets.
///
/// Without interceptors of a kind the wrapper passes that side straight
/// through. With subscribe interceptors a subscription costs one task, and
/// buffers up to `size` messages on each side of the interceptors.
///
/// Clones share the interceptors; adding one to a clone leaves the original
/// as it was.
#[derive(Clone)]
pub struct TestBus {
    chain: Arc<Chain>,
}

impl std::fmt::Debug for TestBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBus")
            .field("publish_interceptors", &self.chain.publish.len())
            .field("subscribe_interceptors", &self.chain.subscribe.len())
            .finish()
    }
}

impl TestBus {
    /// Wraps `bus`, with no interceptors yet.
    pub fn new(bus: impl MessageBus) -> Self {
        TestBus {
            chain: Arc::new(Chain {
                bus: Arc::new(bus),
                publish: Vec::new(),
                subscribe: Vec::new(),
            }),
        }
    }

    /// The wrapped bus.
    pub fn inner(&self) -> &DynBus {
        &self.chain.bus
    }

    /// Adds a publish interceptor, inside those added before.
    ///
    /// `f` is called with the channel, the encoded message and the rest of
    /// the chain; it hands any channel and message to
    /// [`next.publish`](PublishNext::publish) (possibly altered, later, or
    /// more than once), or drops the message by not calling it. What it
    /// returns is what `publish` returns.
    ///
    /// ```
    /// # use psrpc::testing::TestBus;
    /// # use std::time::Duration;
    /// // Delays every publish by 10 ms.
    /// let bus = TestBus::new(psrpc::LocalBus::new()).publish_interceptor(|ch, msg, next| async move {
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    ///     next.publish(ch, msg).await
    /// });
    /// ```
    pub fn publish_interceptor<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Channel, Bytes, PublishNext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f: PublishFn = Arc::new(move |ch, msg, next| Box::pin(f(ch, msg, next)));
        Arc::make_mut(&mut self.chain).publish.push(f);
        self
    }

    /// Adds a subscribe interceptor, inside those added before.
    ///
    /// `f` is called once per subscription with what it is and the raw
    /// message stream from further in; the stream it returns is what the
    /// subscriber reads. Ending the stream closes the subscription; dropping
    /// it (the subscriber closed) unsubscribes from the wrapped bus.
    ///
    /// ```
    /// # use psrpc::testing::TestBus;
    /// use futures::StreamExt;
    /// // Drops every empty message.
    /// let bus = TestBus::new(psrpc::LocalBus::new()).subscribe_interceptor(|_info, raw| {
    ///     raw.filter(|msg| std::future::ready(!msg.is_empty())).boxed()
    /// });
    /// ```
    pub fn subscribe_interceptor<F>(mut self, f: F) -> Self
    where
        F: Fn(&SubscribeInfo, RawStream) -> RawStream + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.chain).subscribe.push(Arc::new(f));
        self
    }

    async fn intercepted(&self, channel: &Channel, size: usize, queue: bool) -> Result<RawStream> {
        let bus = &self.chain.bus;
        let sub = if queue {
            bus.subscribe_queue(channel, size).await?
        } else {
            bus.subscribe(channel, size).await?
        };
        let info = SubscribeInfo {
            channel: channel.clone(),
            queue,
            size,
        };
        let mut raw: RawStream = Box::pin(sub);
        for f in self.chain.subscribe.iter().rev() {
            raw = f(&info, raw);
        }
        Ok(raw)
    }

    async fn subscribe_as(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
    ) -> Result<RawSubscription> {
        let mut raw = self.intercepted(channel, size, queue).await?;
        let (tx, rx) = mpsc::channel(size.max(1));
        let task = tokio::spawn(async move {
            while let Some(msg) = raw.next().await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let abort = task.abort_handle();
        Ok(RawSubscription::new(rx, move || abort.abort()))
    }
}

/// The rest of a publish chain, as a publish interceptor gets it.
///
/// Cloning it lets an interceptor publish more than once.
#[derive(Clone)]
pub struct PublishNext {
    chain: Arc<Chain>,
    index: usize,
}

impl std::fmt::Debug for PublishNext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishNext")
            .field("remaining", &(self.chain.publish.len() - self.index))
            .finish()
    }
}

impl PublishNext {
    /// Hands `msg` for `channel` to the next interceptor, or to the wrapped
    /// bus after the last one.
    pub async fn publish(self, channel: Channel, msg: Bytes) -> Result<()> {
        match self.chain.publish.get(self.index) {
            Some(f) => {
                let next = PublishNext {
                    chain: self.chain.clone(),
                    index: self.index + 1,
                };
                f(channel, msg, next).await
            }
            None => self.chain.bus.publish(&channel, msg).await,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl MessageBus for TestBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        if self.chain.publish.is_empty() {
            return self.chain.bus.publish(channel, msg).await;
        }
        let next = PublishNext {
            chain: self.chain.clone(),
            index: 0,
        };
        next.publish(channel.clone(), msg).await
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        if self.chain.subscribe.is_empty() {
            return self.chain.bus.subscribe(channel, size).await;
        }
        self.subscribe_as(channel, size, false).await
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        if self.chain.subscribe.is_empty() {
            return self.chain.bus.subscribe_queue(channel, size).await;
        }
        self.subscribe_as(channel, size, true).await
    }

    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        if self.chain.subscribe.is_empty() {
            return self
                .chain
                .bus
                .subscribe_handler(channel, size, queue, handler)
                .await;
        }
        let mut raw = self.intercepted(channel, size, queue).await?;
        let task = tokio::spawn(async move {
            while let Some(msg) = raw.next().await {
                handler(msg);
            }
        });
        Ok(HandlerSubscription::new(AbortOnDrop(task.abort_handle())))
    }

    async fn subscribe_inline(
        &self,
        channel: &Channel,
        size: usize,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        if self.chain.subscribe.is_empty() {
            return self
                .chain
                .bus
                .subscribe_inline(channel, size, handler)
                .await;
        }
        self.subscribe_handler(channel, size, false, handler).await
    }

    fn drops(&self) -> &crate::drops::Drops {
        self.chain.bus.drops()
    }

    fn compression(&self) -> &crate::codec::CompressionOptions {
        self.chain.bus.compression()
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        self.chain.bus.check_channel(channel)
    }

    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        self.chain.bus.listeners(channel).await
    }
}

/// Implements [`MessageBus`] for a newtype around [`TestBus`].
macro_rules! delegate_bus {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::bus::MessageBus for $ty {
            async fn publish(
                &self,
                channel: &$crate::bus::Channel,
                msg: bytes::Bytes,
            ) -> $crate::Result<()> {
                self.0.publish(channel, msg).await
            }
            async fn subscribe(
                &self,
                channel: &$crate::bus::Channel,
                size: usize,
            ) -> $crate::Result<$crate::bus::RawSubscription> {
                self.0.subscribe(channel, size).await
            }
            async fn subscribe_queue(
                &self,
                channel: &$crate::bus::Channel,
                size: usize,
            ) -> $crate::Result<$crate::bus::RawSubscription> {
                self.0.subscribe_queue(channel, size).await
            }
            async fn subscribe_handler(
                &self,
                channel: &$crate::bus::Channel,
                size: usize,
                queue: bool,
                handler: $crate::bus::Handler,
            ) -> $crate::Result<$crate::bus::HandlerSubscription> {
                self.0
                    .subscribe_handler(channel, size, queue, handler)
                    .await
            }
            async fn subscribe_inline(
                &self,
                channel: &$crate::bus::Channel,
                size: usize,
                handler: $crate::bus::Handler,
            ) -> $crate::Result<$crate::bus::HandlerSubscription> {
                self.0.subscribe_inline(channel, size, handler).await
            }
            fn drops(&self) -> &$crate::drops::Drops {
                self.0.drops()
            }
            fn compression(&self) -> &$crate::codec::CompressionOptions {
                self.0.compression()
            }

            fn check_channel(&self, channel: &$crate::bus::Channel) -> $crate::Result<()> {
                self.0.check_channel(channel)
            }

            async fn listeners(
                &self,
                channel: &$crate::bus::Channel,
            ) -> $crate::Result<Option<usize>> {
                self.0.listeners(channel).await
            }
        }
    };
}
use delegate_bus;
