//! Subscriptions: the client's typed [`Subscription`].

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use prost::Message;

use super::RpcClient;
use crate::bus::{DynBus, MessageBus};
use crate::channels;
use crate::error::{Error, Result};
use crate::method::Method;
use crate::topic::Topic;
use crate::wire::{self};

impl RpcClient {
    /// Joins the subscription `method` on `topic` (`()` for none), which
    /// receives the method's update type `T`: a fan-out subscription for
    /// multi methods (every subscriber gets every update), otherwise a queue
    /// subscription (one subscriber gets each update).
    pub async fn subscribe<Req, T>(
        &self,
        method: &Method<Req, T>,
        topic: impl Into<Topic>,
    ) -> Result<Subscription<T>>
    where
        T: Message + prost::Name + Default,
    {
        let (method, topic) = (&method.info, topic.into());
        let topic = topic.parts();
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        let ch = channels::rpc_channel(&self.inner.service, &method.name, topic, method.queue);
        let size = self.inner.opts.channel_size;
        let sub = if method.multi {
            self.inner.bus.subscribe(&ch, size).await
        } else {
            self.inner.bus.subscribe_queue(&ch, size).await
        };
        // The bus's error as it is: it says what happened (bus down, name or
        // message over the bus's limits).
        let sub = sub?;
        Ok(Subscription {
            raw: sub,
            type_url: wire::type_url_of::<T>(),
            channel: ch.legacy,
            bus: self.inner.bus.clone(),
            _t: PhantomData,
        })
    }
}

/// A joined subscription: a `futures::Stream` of decoded updates. Updates
/// that do not decode, or carry another type, are dropped and logged.
/// Dropping it (or [`close`](Subscription::close)) leaves the subscription.
#[must_use = "dropping a subscription leaves it"]
pub struct Subscription<T> {
    raw: crate::bus::RawSubscription,
    type_url: String,
    channel: String,
    /// Decodes the updates (compression) and counts those dropped.
    bus: DynBus,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("type_url", &self.type_url)
            .finish()
    }
}

impl<T: Message + Default> Subscription<T> {
    /// The next update; `None` once the subscription is closed.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let b = self.raw.recv().await?;
            if let Some(m) = self.decode(b) {
                return Some(m);
            }
        }
    }

    /// Leaves the subscription; later reads return `None`.
    pub fn close(&mut self) {
        self.raw.close();
    }

    fn decode(&self, b: Bytes) -> Option<T> {
        crate::bus::receive(&*self.bus, || self.channel.clone(), &self.type_url, b)
    }
}

impl<T: Message + Default> futures::Stream for Subscription<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.raw).poll_next(cx) {
                Poll::Ready(Some(b)) => {
                    if let Some(m) = self.decode(b) {
                        return Poll::Ready(Some(m));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
