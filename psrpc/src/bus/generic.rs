//! [`Bus`]: the one [`MessageBus`] over any [`Transport`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;

use super::transport::Route;
use super::{
    Channel, CompressionOptions, Handler, HandlerSubscription, Inbox, Members, MessageBus,
    RawSubscription, Transport,
};
use crate::drops::Drops;
use crate::error::{Error, ErrorCode, Result};

/// A [`MessageBus`] over a [`Transport`]: the subscribers of each channel,
/// the dispatch to them, the size limit, drop counting and compression
/// options, the same for every broker. Clones share the bus.
///
/// It dereferences to its transport, for what is particular to a broker
/// (connection state, reconnect counts).
pub struct Bus<T: Transport> {
    shared: Arc<Shared<T>>,
    pub(super) compression: CompressionOptions,
}

struct Shared<T> {
    transport: T,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl<T: Transport> Clone for Bus<T> {
    fn clone(&self) -> Self {
        Bus {
            shared: self.shared.clone(),
            compression: self.compression,
        }
    }
}

impl<T: Transport + std::fmt::Debug> std::fmt::Debug for Bus<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.shared.transport)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<T: Transport> std::ops::Deref for Bus<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.shared.transport
    }
}

/// Takes one subscriber out of its route when dropped. Holds the bus, so
/// that a subscription outlives the handle it was made with and still
/// leaves its route (and the transport's listening) when dropped.
struct Leave<T: Transport> {
    shared: Arc<Shared<T>>,
    key: String,
    id: u64,
    queue: bool,
}

impl<T: Transport> Drop for Leave<T> {
    fn drop(&mut self) {
        let shared = &self.shared;
        let stopped = {
            let mut routes = shared.routes.lock().unwrap_or_else(|e| e.into_inner());
            let Some(route) = routes.get(&self.key).cloned() else {
                return;
            };
            let members = route.update(|m| m.remove(self.id));
            let still = if self.queue {
                members.has_queue()
            } else {
                members.has_fanout()
            };
            if members.is_empty() {
                routes.remove(&self.key);
            }
            if still {
                None
            } else {
                route.listening()[usize::from(self.queue)].take()
            }
        };
        // Stops the transport outside the lock.
        drop(stopped);
    }
}

fn closed_error() -> Error {
    Error::new(ErrorCode::Unavailable, "bus closed")
}

impl<T: Transport> Bus<T> {
    /// A bus over `transport`, whose runtime publishes with `compression`
    /// (see [`crate::codec`]).
    pub fn from_transport(transport: T, compression: CompressionOptions) -> Self {
        Bus {
            shared: Arc::new(Shared {
                transport,
                routes: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
            }),
            compression,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.shared.transport
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.shared.transport.drops().total()
    }

    /// Whether [`close`](Self::close) was called (on any clone).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Closes the bus, for every clone: stops listening on every channel
    /// (subscriptions then read as ended once drained), sends what the
    /// transport still holds for the broker, and makes later publishes and
    /// subscriptions fail with `unavailable`. Closing again does nothing.
    pub async fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let routes: Vec<Arc<Route>> = {
            let mut map = self.shared.routes.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, r)| r).collect()
        };
        for route in routes {
            let listening = std::mem::take(&mut *route.listening());
            drop(listening);
            route.update(|m| *m = Members::default());
        }
        self.shared.transport.close().await
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(closed_error());
        }
        Ok(())
    }

    /// Adds `handler` to `channel`, called by the task that delivers.
    async fn join_handler(
        &self,
        channel: &Channel,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        let leave = self
            .join(channel, queue, |m, id| m.add_handler(id, handler, queue))
            .await?;
        Ok(HandlerSubscription::new(leave))
    }

    /// Adds a subscriber to `channel` (made by `add` with its id) and
    /// returns once the transport listens for its kind.
    async fn join(
        &self,
        channel: &Channel,
        queue: bool,
        add: impl FnOnce(&mut Members, u64),
    ) -> Result<Leave<T>> {
        self.check_open()?;
        let transport = &self.shared.transport;
        transport.check_channel(channel)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let key = channel.legacy.clone();
        let route = {
            let mut routes = self.shared.routes.lock().unwrap_or_else(|e| e.into_inner());
            let route = routes
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Route {
                        name: key.clone(),
                        members: RwLock::default(),
                        drops: transport.drops().clone(),
                        max: transport.max_payload(),
                        listening: Mutex::default(),
                        starting: tokio::sync::Mutex::new(()),
                    })
                })
                .clone();
            route.update(|m| add(m, id));
            route
        };
        // Made now, so that failing below takes the subscriber out again.
        let leave = Leave {
            shared: self.shared.clone(),
            key,
            id,
            queue,
        };
        let kind = usize::from(queue);
        let _starting = route.starting.lock().await;
        if route.listening()[kind].is_none() {
            let inbox = Inbox {
                route: route.clone(),
            };
            let listening = transport.listen(channel, queue, inbox).await?;
            let members = route.members();
            let wanted = if queue {
                members.has_queue()
            } else {
                members.has_fanout()
            };
            // Unless every subscriber of the kind left meanwhile.
            if wanted && !self.is_closed() {
                route.listening()[kind] = Some(listening);
            }
        }
        Ok(leave)
    }

    async fn subscribe_buffer(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
    ) -> Result<RawSubscription> {
        let (sink, rx) = self.shared.transport.buffer(size);
        let leave = self
            .join(channel, queue, |m, id| m.add(id, sink, queue))
            .await?;
        Ok(RawSubscription::new(rx, move || drop(leave)))
    }
}

#[async_trait]
impl<T: Transport> MessageBus for Bus<T> {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
        self.check_open()?;
        let transport = &self.shared.transport;
        // The transport checks the channel as it publishes (it builds the
        // broker's name for it there anyway): not twice here.
        if let Some(max) = transport.max_payload()
            && msg.len() > max
        {
            return Err(Error::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "message of {} bytes is larger than the bus's maximum of {max} bytes",
                    msg.len()
                ),
            ));
        }
        transport.publish(channel, msg).await
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        self.subscribe_buffer(channel, size, false).await
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        self.subscribe_buffer(channel, size, true).await
    }

    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        if self.shared.transport.calls_handlers_inline() {
            return self.join_handler(channel, queue, handler).await;
        }
        let sub = self.subscribe_buffer(channel, size, queue).await?;
        Ok(super::read_in_task(sub, handler))
    }

    async fn subscribe_inline(
        &self,
        channel: &Channel,
        _size: usize,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        let handler = if self.shared.transport.calls_handlers_inline() {
            handler
        } else {
            off_reader_when_compressed(handler)
        };
        self.join_handler(channel, false, handler).await
    }

    fn drops(&self) -> &Drops {
        self.shared.transport.drops()
    }

    fn compression(&self) -> &CompressionOptions {
        &self.compression
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        self.shared.transport.check_channel(channel)
    }

    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        self.shared.transport.listeners(channel).await
    }
}

/// `handler`, for a broker's reader: a compressed message is handed to a
/// task of its own, since inflating it (up to the decompression cap) is
/// work that would hold up every subscription the reader serves; a plain
/// one is handled at once. (Compressed messages may so be handled after
/// plain ones that arrived later.)
fn off_reader_when_compressed(handler: Handler) -> Handler {
    Arc::new(move |msg: Bytes| {
        if crate::wire::is_compressed(&msg)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let handler = handler.clone();
            rt.spawn(async move { handler(msg) });
        } else {
            handler(msg)
        }
    })
}

/// A bus type of a broker crate that wraps a [`Bus`] (a newtype, so that
/// it can have constructors of its own): implementing this makes it a
/// [`MessageBus`] that forwards to the wrapped bus.
pub trait AsBus: Send + Sync + 'static {
    /// The broker's transport.
    type Transport: Transport;

    /// The wrapped bus.
    fn as_bus(&self) -> &Bus<Self::Transport>;
}

#[async_trait]
impl<W: AsBus> MessageBus for W {
    fn publish<'s, 'c, 'async_trait>(
        &'s self,
        channel: &'c Channel,
        msg: Bytes,
    ) -> super::Forwarded<'async_trait, ()>
    where
        's: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
    {
        self.as_bus().publish(channel, msg)
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        self.as_bus().subscribe(channel, size).await
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<RawSubscription> {
        self.as_bus().subscribe_queue(channel, size).await
    }

    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        self.as_bus()
            .subscribe_handler(channel, size, queue, handler)
            .await
    }

    async fn subscribe_inline(
        &self,
        channel: &Channel,
        size: usize,
        handler: Handler,
    ) -> Result<HandlerSubscription> {
        self.as_bus().subscribe_inline(channel, size, handler).await
    }

    fn drops(&self) -> &Drops {
        self.as_bus().drops()
    }

    fn compression(&self) -> &CompressionOptions {
        self.as_bus().compression()
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        self.as_bus().check_channel(channel)
    }

    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        self.as_bus().listeners(channel).await
    }
}
