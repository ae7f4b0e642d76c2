//! The bus layer: what moves the runtime's bytes between peers.
//!
//! Two levels, as in every psrpc bus:
//!
//! - [`MessageBus`] is what the runtime uses: publish bytes on a
//!   [`Channel`], subscribe to one (fan-out or as a queue member), with the
//!   options the runtime reads from the bus (compression, drop counts,
//!   channel checks).
//! - [`Transport`] is what a broker implements: publish opaque bytes, and
//!   start or stop listening on a channel, delivering what arrives into an
//!   [`Inbox`]. The generic [`Bus`] turns any transport into a
//!   [`MessageBus`], and owns everything above the broker once for all
//!   brokers: the subscribers of each channel and the dispatch to them
//!   (fan-out, a queue message to one member in turn, the slow-consumer
//!   policy of [`Sink`]), drop counting, the size limit, and the
//!   compression options.
//!
//! Three transports exist: [`LocalTransport`] (in-process, here; the bus is
//! [`LocalBus`]), Redis and NATS (the `psrpc-redis` and `psrpc-nats`
//! crates). A new broker is one [`Transport`] impl; see
//! `docs/ARCHITECTURE.md`.
//!
//! A bus moves bytes; it knows nothing of RPC. The runtime hands it encoded
//! `Msg` envelopes without the channel field; a transport that
//! demultiplexes shared subjects (NATS) appends `Msg.channel` itself with
//! [`wire::append_channel`](crate::protocol::wire::append_channel).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

mod dispatch;
mod generic;
mod local;
mod receive;
mod subscription;
mod transport;

/// Default buffer size of subscriptions, of the clients' pending calls and of
/// the servers' subscriptions and streams.
pub const DEFAULT_CHANNEL_SIZE: usize = 100;

pub use crate::channels::Channel;
pub use crate::codec::CompressionOptions;
pub(crate) use dispatch::Members;
pub use dispatch::{READER_PENDING_LIMIT, READER_STUCK_AFTER, Sink};
pub use generic::{AsBus, Bus};
pub use local::{LocalBus, LocalTransport};
pub(crate) use receive::{decode_payload, receive_payload};
pub use receive::{receive, receive_envelope};
use subscription::AbortOnDrop;
pub use subscription::{Handler, HandlerSubscription, RawSubscription};
pub use transport::{Inbox, Listening, QueueError, Transport, ready_or_until, send_within};

use crate::drops::Drops;
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
    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<RawSubscription>;

    /// Joins the queue of `channel`: each message goes to one member.
    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<RawSubscription>;

    /// Subscribes `handler` to `channel` (as a queue member when `queue`):
    /// it is called with every message, and must be quick and never block.
    /// The runtime uses this for its own channels.
    ///
    /// The default reads a [`RawSubscription`] in a task. [`LocalBus`] calls
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
        let sub = if queue {
            self.subscribe_queue(channel, size).await?
        } else {
            self.subscribe(channel, size).await?
        };
        Ok(read_in_task(sub, handler))
    }

    /// Subscribes `handler` to every message of `channel` (fan-out), for a
    /// handler that only hands each message on: it decodes it and gives it
    /// to a waiting task, or starts one, without ever waiting or
    /// publishing (the client's response and claim routers, a server's
    /// claim-response handler). Such a handler costs a broker's reader
    /// less than a task hop per message does, so a bus may call it in the
    /// task that reads the broker: the buses of this crate's [`Bus`] do,
    /// for a plain message (a compressed one goes to a task, inflating
    /// being work the reader should not do), and count a panic of the
    /// handler as a [`Panicked`](crate::drops::DropReason::Panicked) drop.
    /// A task the handler starts runs on the reader's runtime (the one the
    /// bus was made on). The default is
    /// [`subscribe_handler`](Self::subscribe_handler).
    async fn subscribe_inline(
        &self,
        channel: &Channel,
        size: usize,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        self.subscribe_handler(channel, size, false, handler).await
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

/// The boxed future of a [`MessageBus`] method, as `async_trait` declares
/// it; a bus that forwards to another returns the other's as it is,
/// without a box of its own around it.
pub(crate) type Forwarded<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>;

#[async_trait]
impl<B: MessageBus + ?Sized> MessageBus for Arc<B> {
    fn publish<'s, 'c, 'async_trait>(
        &'s self,
        channel: &'c Channel,
        msg: Bytes,
    ) -> Forwarded<'async_trait, ()>
    where
        's: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
    {
        (**self).publish(channel, msg)
    }
    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        (**self).subscribe(channel, size).await
    }
    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
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
    async fn subscribe_inline(
        &self,
        channel: &Channel,
        size: usize,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        (**self).subscribe_inline(channel, size, handler).await
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
/// A handler subscription that reads `sub` in a task of its own.
fn read_in_task(mut sub: RawSubscription, handler: Handler) -> HandlerSubscription {
    let task = tokio::spawn(async move {
        while let Some(b) = sub.recv().await {
            handler(b);
        }
    });
    HandlerSubscription::new(AbortOnDrop(task))
}

/// A shared, type-erased bus, as the runtime holds it.
pub type DynBus = Arc<dyn MessageBus>;
