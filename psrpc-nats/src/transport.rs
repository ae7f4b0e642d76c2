//! [`NatsTransport`]: the NATS specifics under the generic
//! [`psrpc::bus::Bus`]: the connection, subjects and their limits,
//! publishing, presence probes and closing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use psrpc::bus::{Channel, Inbox, Listening, Transport};
use psrpc::drops::Drops;
use tokio::sync::{mpsc, oneshot};

use crate::barrier::Barrier;
use crate::builder::NatsBusBuilder;
use crate::conn::{Conn, is_up};
use crate::error::{Error, Result};
use crate::handback::HandBack;
use crate::lock;
use crate::publish::{Item, PUBLISH_QUEUE, enqueue, writer};
use crate::router::Router;
use crate::slot::close_slot_now;
use crate::subject::{check_subject, max_subject_for, subject};
use crate::subscribe::Direct;

/// How long `publish` waits for room in a full queue (the writer's, or
/// async-nats' command queue).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// Publishes closer together than this (on one bus) go through the writer
/// (see [`crate::publish`]); one after a pause goes to async-nats at once.
const BUSY_GAP: Duration = Duration::from_micros(50);

/// How long a presence probe waits for "no responders" (see
/// [`psrpc::MessageBus::listeners`]); silence past it means someone listens.
const PRESENCE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The NATS transport of a [`NatsBus`](crate::NatsBus) (see the
/// [crate docs](crate)).
pub struct NatsTransport {
    pub(crate) client: Client,
    /// The writer's queue (see [`crate::publish`]); `None` when the bus
    /// was made outside a tokio runtime: then publishes go to async-nats
    /// directly.
    publish_tx: Option<mpsc::Sender<Item>>,
    /// Publishes queued for the writer and not yet handed to async-nats.
    queued: Arc<AtomicUsize>,
    /// When the last publish was made, in microseconds since `epoch`.
    last_publish: AtomicU64,
    epoch: Instant,
    pub(crate) prefix: String,
    pub(crate) state: Arc<State>,
    pub(crate) conn: Arc<Conn>,
    pub(crate) max_subject: usize,
    pub(crate) max_message: Option<usize>,
}

/// What the transport's subscriptions share.
pub(crate) struct State {
    pub(crate) client: Client,
    /// Serializes router creation (a NATS subscribe is awaited meanwhile)
    /// and closing.
    pub(crate) create: tokio::sync::Mutex<()>,
    pub(crate) routers: Mutex<HashMap<(String, bool), Arc<Router>>>,
    /// The direct (unrouted) subscriptions, by id.
    pub(crate) directs: Mutex<HashMap<u64, Direct>>,
    pub(crate) next_id: AtomicU64,
    /// Shared with the connection's event callback (async-nats' own drops).
    pub(crate) drops: Arc<Drops>,
    pub(crate) hand: Arc<HandBack>,
    pub(crate) barrier: Barrier,
    pub(crate) closed: AtomicBool,
    /// Whether the bus made the connection (and so closes it).
    owns_client: bool,
}

impl Drop for State {
    /// Stops the readers (their NATS subscriptions go with them: a
    /// listening holds the state weakly, and the inboxes the readers hold
    /// keep the listenings). async-nats closes a connection whose last
    /// handle is dropped without writing what is still buffered: flush
    /// first, so that a publish made just before dropping the bus is not
    /// lost.
    fn drop(&mut self) {
        for r in lock(&self.routers).values() {
            r.stop.cancel();
        }
        for d in lock(&self.directs).values() {
            d.stop.cancel();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client.flush().await;
            });
        }
    }
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("prefix", &self.prefix)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl NatsTransport {
    /// The transport `options` make over `client`, whose drops go to `drops`.
    pub(crate) fn new(
        options: &NatsBusBuilder,
        client: Client,
        drops: Arc<Drops>,
        owns_client: bool,
    ) -> NatsTransport {
        let queued = Arc::new(AtomicUsize::new(0));
        let publish_tx = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
            rt.spawn(writer(rx, client.clone(), drops.clone(), queued.clone()));
            tx
        });
        NatsTransport {
            publish_tx,
            queued,
            last_publish: AtomicU64::new(0),
            epoch: Instant::now(),
            prefix: options.prefix.clone(),
            conn: Conn::start(&client),
            max_subject: max_subject_for(options.max_control_line),
            max_message: options.max_message_size,
            state: Arc::new(State {
                client: client.clone(),
                create: tokio::sync::Mutex::new(()),
                routers: Mutex::new(HashMap::new()),
                directs: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                hand: Arc::new(HandBack::new(
                    options.queue_hand_back,
                    client.clone(),
                    drops.clone(),
                )),
                drops,
                barrier: Barrier::new(client.clone()),
                closed: AtomicBool::new(false),
                owns_client,
            }),
            client,
        }
    }

    /// See [`NatsBus::max_message_size`](crate::NatsBus::max_message_size).
    pub fn max_message_size(&self) -> usize {
        let server = self.client.max_payload();
        self.max_message.map_or(server, |m| m.min(server))
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        is_up(&self.client)
    }

    /// The NATS subject of `channel` on this bus.
    pub fn subject(&self, channel: &Channel) -> String {
        subject(&self.prefix, channel)
    }

    /// Fails with [`Error::Closed`] once the transport is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.state.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Publishes `payload` (the envelope with its `Msg.channel`) on
    /// `subject`: queues it for the writer (see [`crate::publish`]), or,
    /// without one, hands it to async-nats; waits at most [`PUBLISH_WAIT`]
    /// for room in a full queue.
    async fn publish_raw(&self, subject: String, payload: Bytes) -> Result<()> {
        let max = self.max_message_size();
        if payload.len() > max {
            let size = payload.len();
            return Err(Error::TooLarge { size, max });
        }
        self.check_open()?;
        if !self.is_connected() {
            return Err(Error::Disconnected);
        }
        if let Some(tx) = &self.publish_tx {
            // Busy (publishes close together) or the writer still holds
            // some (which this one must not overtake): through the writer,
            // which gathers them into one socket write. Otherwise at once,
            // without the writer's task hop.
            let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            let gap = now.saturating_sub(self.last_publish.swap(now, Ordering::Relaxed));
            let busy = gap < BUSY_GAP.as_micros() as u64;
            if busy || self.queued.load(Ordering::Acquire) > 0 {
                self.queued.fetch_add(1, Ordering::AcqRel);
                let r = enqueue(tx, subject, payload, PUBLISH_WAIT).await;
                if r.is_err() {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                }
                return r;
            }
        }
        // async-nats queues the publish for its connection task; that queue
        // is bounded and not drained while reconnecting: wait for room at
        // most PUBLISH_WAIT. Its publish future is boxed (a small
        // allocation): held inline, it made the future of every publish
        // over a kilobyte, which allocates slowly.
        let publish = Box::pin(self.client.publish(subject, payload));
        match psrpc::bus::ready_or_until(publish, || tokio::time::Instant::now() + PUBLISH_WAIT)
            .await
        {
            Some(r) => r.map_err(Error::Publish),
            None => Err(Error::PublishQueueFull(PUBLISH_WAIT)),
        }
    }

    /// A request with an empty payload to `subject`: "no responders" means
    /// 0 listeners; a reply, or none within `timeout`, 1.
    async fn probe(&self, subject: String, timeout: Duration) -> Result<usize> {
        self.check_open()?;
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(timeout));
        match self.client.send_request(subject, request).await {
            Ok(_) => Ok(1),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Ok(0),
                async_nats::RequestErrorKind::TimedOut => Ok(1),
                _ => Err(Error::Presence(e)),
            },
        }
    }

    /// Stops everything still running, unsubscribes what is still
    /// subscribed (the bus has dropped its listenings already), writes out
    /// what was published and closes a connection the bus made.
    async fn shut(&self) -> Result<()> {
        let st = &self.state;
        st.closed.store(true, Ordering::SeqCst);
        // Waits for a router being made, which then sees the bus closed.
        let _creating = st.create.lock().await;
        let routers: Vec<_> = lock(&st.routers).drain().map(|(_, r)| r).collect();
        let directs: Vec<_> = lock(&st.directs).drain().map(|(_, d)| d).collect();
        for r in routers {
            r.stop.cancel();
            close_slot_now(&r.nats, &r.subject, r.queue, &st.hand).await;
        }
        for d in directs {
            d.stop.cancel();
            close_slot_now(&d.nats, &d.subject, d.queue, &st.hand).await;
        }
        st.barrier.close().await;
        // What the writer holds goes to async-nats first (later publishes
        // are refused), then everything is flushed below.
        if let Some(tx) = &self.publish_tx {
            let (done, handed) = oneshot::channel();
            if tx.send(Item::Flush(done)).await.is_ok() {
                let _ = handed.await;
            }
        }
        self.conn.stop();
        let flushed = self.client.flush().await.map_err(Error::Flush);
        if st.owns_client && flushed.is_ok() {
            let _ = self.client.drain().await;
        }
        flushed
    }
}

impl Transport for NatsTransport {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> psrpc::Result<()> {
        let payload = if channel.local.is_empty() {
            msg
        } else {
            psrpc::protocol::wire::append_channel(&msg, &channel.local)
        };
        let subject = self.subject(channel);
        check_subject(&subject, self.max_subject)?;
        Ok(self.publish_raw(subject, payload).await?)
    }

    async fn listen(
        &self,
        channel: &Channel,
        queue: bool,
        inbox: Inbox,
    ) -> psrpc::Result<Listening> {
        Ok(self.listen_on(channel, queue, inbox).await?)
    }

    fn drops(&self) -> &Arc<Drops> {
        &self.state.drops
    }

    /// The server's `max_payload`, or less (see
    /// [`NatsBusBuilder::max_message_size`]).
    fn max_payload(&self) -> Option<usize> {
        Some(self.max_message_size())
    }

    fn check_channel(&self, channel: &Channel) -> psrpc::Result<()> {
        Ok(check_subject(&self.subject(channel), self.max_subject)?)
    }

    /// Counts only the presence channels of streams
    /// ([`psrpc::stream::PRESENCE_SUBJECT_PREFIX`]; `None` for any other):
    /// core NATS cannot tell a subject's interest without publishing to it.
    /// A request with an empty payload goes to the subject: "no responders"
    /// means 0; a reply, or none within the probe timeout (the presence
    /// subscription ignores requests), means someone listens (1).
    async fn listeners(&self, channel: &Channel) -> psrpc::Result<Option<usize>> {
        if !channel
            .server
            .starts_with(psrpc::stream::PRESENCE_SUBJECT_PREFIX)
        {
            return Ok(None);
        }
        let n = self
            .probe(self.subject(channel), PRESENCE_PROBE_TIMEOUT)
            .await?;
        Ok(Some(n))
    }

    async fn close(&self) -> psrpc::Result<()> {
        Ok(self.shut().await?)
    }
}
