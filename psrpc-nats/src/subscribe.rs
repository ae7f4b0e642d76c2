//! Listening: a NATS subscription per subject, confirmed by the server
//! before `listen` returns, read directly (a channel without
//! `Msg.channel`) or through a router shared by the channels of its subject.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use psrpc::CancellationToken;
use psrpc::bus::{Channel, Inbox, Listening};

use crate::QUEUE_GROUP;
use crate::error::{Error, Result};
use crate::lock;
use crate::router::{Router, run_router};
use crate::slot::{Slot, close_slot, run_direct, slot};
use crate::transport::NatsTransport;

/// A direct subscription, as closing needs it.
pub(crate) struct Direct {
    pub(crate) nats: Slot,
    pub(crate) subject: String,
    pub(crate) queue: bool,
    pub(crate) stop: CancellationToken,
}

impl NatsTransport {
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

    /// Starts delivering `channel`'s messages (as a queue member when
    /// `queue`) into `inbox`.
    pub(crate) async fn listen_on(
        &self,
        channel: &Channel,
        queue: bool,
        inbox: Inbox,
    ) -> Result<Listening> {
        let subject = self.subject(channel);
        if channel.local.is_empty() {
            return self.listen_direct(subject, queue, inbox).await;
        }
        let st = &self.state;
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (subject.clone(), queue);
        let local = channel.local.clone();
        let creating = st.create.lock().await;
        self.check_open()?;
        let existing = lock(&st.routers).get(&key).cloned();
        match existing {
            Some(router) => router.add(&local, id, inbox),
            None => {
                let nats = self.nats_subscribe(&subject, queue).await?;
                let router = Arc::new(Router::new(subject, queue, slot(nats)));
                router.add(&local, id, inbox);
                lock(&st.routers).insert(key.clone(), router.clone());
                tokio::spawn(run_router(router, st.hand.clone()));
            }
        }
        drop(creating);
        let state = Arc::downgrade(st);
        Ok(Listening::new(move || {
            let Some(state) = state.upgrade() else { return };
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
    /// NATS subscription read by one task that delivers into `inbox`.
    async fn listen_direct(&self, subject: String, queue: bool, inbox: Inbox) -> Result<Listening> {
        let st = &self.state;
        let nats = slot(self.nats_subscribe(&subject, queue).await?);
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        {
            let mut directs = lock(&st.directs);
            if self.check_open().is_err() {
                drop(directs);
                close_slot(&nats, &subject, queue, &st.hand);
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
        let hand = st.hand.clone();
        tokio::spawn(run_direct(nats, subject, queue, inbox, hand, stop));
        let state = Arc::downgrade(st);
        Ok(Listening::new(move || {
            let Some(state) = state.upgrade() else { return };
            let Some(d) = lock(&state.directs).remove(&id) else {
                return;
            };
            d.stop.cancel();
            close_slot(&d.nats, &d.subject, d.queue, &state.hand);
        }))
    }
}
