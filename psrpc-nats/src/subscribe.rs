//! Subscribing: a NATS subscription per subject, confirmed by the server
//! before `subscribe` returns, read directly or through a router.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use psrpc::CancellationToken;
use psrpc::bus::{Channel, Sink, Subscription};

use crate::bus::{NatsBus, QUEUE_GROUP};
use crate::error::{Error, Result};
use crate::lock;
use crate::router::{Router, run_router};
use crate::slot::{Slot, close_slot, run_direct, slot};

/// A direct subscription, as closing needs it.
pub(crate) struct Direct {
    pub(crate) nats: Slot,
    pub(crate) subject: String,
    pub(crate) queue: bool,
    pub(crate) stop: CancellationToken,
}

/// What unsubscribes a sink.
type Remover = Box<dyn FnOnce() + Send + Sync>;

impl NatsBus {
    /// Subscribes `subject` (in the queue group when `queue`); returns once
    /// the server has the subscription.
    async fn nats_subscribe(&self, subject: &str, queue: bool) -> Result<async_nats::Subscriber> {
        self.check_open()?;
        let sub = if queue {
            self.client
                .queue_subscribe(subject.to_owned(), QUEUE_GROUP.to_owned())
                .await
        } else {
            self.client.subscribe(subject.to_owned()).await
        }
        .map_err(|source| Error::Subscribe {
            subject: subject.to_owned(),
            source,
        })?;
        self.state
            .barrier
            .sync()
            .await
            .map_err(|source| Error::Unconfirmed {
                subject: subject.to_owned(),
                source,
            })?;
        Ok(sub)
    }

    /// Adds a sink to `channel`; returns what removes it.
    async fn add(&self, channel: &Channel, queue: bool, sink: Sink) -> Result<Remover> {
        self.check(channel)?;
        let subject = self.subject(channel);
        if channel.local.is_empty() {
            return self.add_direct(subject, queue, sink).await;
        }
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (subject.clone(), queue);
        let local = channel.local.clone();
        let creating = self.state.create.lock().await;
        self.check_open()?;
        let existing = {
            let routers = lock(&self.state.routers);
            routers
                .get(&key)
                .cloned()
                .inspect(|r| r.add(&local, id, sink.clone()))
        };
        if existing.is_none() {
            let nats = self.nats_subscribe(&subject, queue).await?;
            let router = Arc::new(Router::new(subject.clone(), queue, slot(nats)));
            router.add(&local, id, sink);
            lock(&self.state.routers).insert(key.clone(), router.clone());
            tokio::spawn(run_router(router, self.state.hand.clone()));
        }
        drop(creating);
        let state = self.state.clone();
        Ok(Box::new(move || {
            let mut routers = lock(&state.routers);
            let Some(router) = routers.get(&key).cloned() else {
                return;
            };
            if router.remove(&local, id) {
                routers.remove(&key);
                drop(routers);
                router.stop.cancel();
                close_slot(&router.nats, &router.subject, router.queue, &state.hand);
            }
        }))
    }

    /// A subscription of the whole subject (no `Msg.channel` routing): one
    /// NATS subscription read by one task that feeds the sink.
    async fn add_direct(&self, subject: String, queue: bool, sink: Sink) -> Result<Remover> {
        let nats = slot(self.nats_subscribe(&subject, queue).await?);
        let (id, stop) = (
            self.state.next_id.fetch_add(1, Ordering::Relaxed),
            CancellationToken::new(),
        );
        {
            let mut directs = lock(&self.state.directs);
            if self.is_closed() {
                drop(directs);
                close_slot(&nats, &subject, queue, &self.state.hand);
                return Err(Error::Closed);
            }
            let d = Direct {
                nats: nats.clone(),
                subject: subject.clone(),
                queue,
                stop: stop.clone(),
            };
            directs.insert(id, d);
        }
        let hand = self.state.hand.clone();
        tokio::spawn(run_direct(nats, subject, queue, sink, hand, stop));
        let state = self.state.clone();
        Ok(Box::new(move || {
            let Some(d) = lock(&state.directs).remove(&id) else {
                return;
            };
            d.stop.cancel();
            close_slot(&d.nats, &d.subject, d.queue, &state.hand);
        }))
    }

    /// A subscription of `channel` buffering `size` messages.
    pub(crate) async fn add_chan(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
    ) -> Result<Subscription> {
        // A burst is buffered for a subscriber that keeps reading; one that
        // stops is cut off: see the crate docs (slow consumers).
        let (sink, rx) = Sink::for_reader(size);
        let remove = self.add(channel, queue, sink).await?;
        Ok(Subscription::new(rx, remove))
    }
}
