//! The bus: its connection, its subscriptions (direct or through a
//! router), publishing, and closing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use async_trait::async_trait;
use bytes::Bytes;
use psrpc::MessageBus;
use psrpc::bus::{Channel, Subscription};
use psrpc::drops::Drops;

use crate::barrier::Barrier;
use crate::builder::NatsBusBuilder;
use crate::conn::{Conn, is_up};
use crate::error::{Error, Result};
use crate::handback::HandBack;
use crate::lock;
use crate::router::Router;
use crate::slot::close_slot_now;
use crate::subject::{check_subject, max_subject_for, subject};

/// The queue group of every queue subscription (Go psrpc's `bus`).
pub const QUEUE_GROUP: &str = "bus";

/// How long `publish` waits for room in async-nats' full command queue.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// A psrpc [`MessageBus`] over NATS, made by
/// [`NatsBus::connect`] or [`NatsBus::builder`]. Clones share the
/// connection, the subscriptions and [`close`](NatsBus::close).
#[derive(Clone)]
pub struct NatsBus {
    pub(crate) client: Client,
    pub(crate) prefix: Arc<str>,
    pub(crate) state: Arc<State>,
    pub(crate) compression: psrpc::CompressionOptions,
    pub(crate) conn: Arc<Conn>,
    pub(crate) max_subject: usize,
    pub(crate) max_message: Option<usize>,
}

/// What the clones of a bus share besides the connection.
pub(crate) struct State {
    pub(crate) client: Client,
    /// Serializes router creation (a NATS subscribe is awaited meanwhile)
    /// and closing.
    pub(crate) create: tokio::sync::Mutex<()>,
    pub(crate) routers: Mutex<HashMap<(String, bool), Arc<Router>>>,
    /// The direct (unrouted) subscriptions, by id.
    pub(crate) directs: Mutex<HashMap<u64, crate::subscribe::Direct>>,
    pub(crate) next_id: AtomicU64,
    /// Shared with the connection's event callback (async-nats' own drops).
    pub(crate) drops: Arc<Drops>,
    pub(crate) hand: Arc<HandBack>,
    pub(crate) barrier: Barrier,
    pub(crate) closed: AtomicBool,
    /// Whether the bus made the connection (and so closes it).
    pub(crate) owns_client: bool,
}

impl Drop for State {
    /// async-nats closes a connection whose last handle is dropped without
    /// writing what is still buffered: flush first, so that a publish made
    /// just before dropping the bus is not lost.
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client.flush().await;
            });
        }
    }
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("prefix", &&*self.prefix)
            .field("dropped", &self.dropped())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl NatsBus {
    /// Connects with the default options to the NATS server(s) at `url`
    /// (for example `nats://user:pass@127.0.0.1:4222`; several
    /// comma-separated URLs are allowed); see
    /// [`NatsBusBuilder::connect`]. Fails at once with an `unavailable`
    /// error ([`Error::code`]) when no server can be reached or the
    /// credentials are refused.
    pub async fn connect(url: &str) -> Result<NatsBus> {
        Self::builder().connect(url).await
    }

    /// A builder taking the bus's options, then connecting.
    pub fn builder() -> NatsBusBuilder {
        NatsBusBuilder::default()
    }

    /// The bus `options` make over `client`, whose drops go to `drops`.
    pub(crate) fn assemble(
        options: NatsBusBuilder,
        client: Client,
        drops: Arc<Drops>,
        owns_client: bool,
    ) -> NatsBus {
        NatsBus {
            prefix: Arc::from(options.prefix),
            conn: Conn::start(&client),
            max_subject: max_subject_for(options.max_control_line),
            max_message: options.max_message_size,
            compression: options.compression,
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

    /// The largest message this bus sends: the server's `max_payload` (as
    /// announced in its `INFO`, updated at every reconnection), or less if
    /// set with [`NatsBusBuilder::max_message_size`].
    pub fn max_message_size(&self) -> usize {
        let server = self.client.max_payload();
        self.max_message.map_or(server, |m| m.min(server))
    }

    /// The longest subject (prefix included) this bus uses.
    pub fn max_subject_len(&self) -> usize {
        self.max_subject
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        is_up(&self.client)
    }

    /// Follows [`is_connected`](Self::is_connected) (looked at every 100 ms
    /// until the bus is closed).
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.conn.subscribe()
    }

    /// How many times the connection was re-established since the bus was
    /// made.
    pub fn reconnects(&self) -> u64 {
        self.conn.reconnects()
    }

    /// The subject prefix (empty for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The async-nats client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`] for the counts by reason).
    pub fn dropped(&self) -> u64 {
        self.state.drops.total()
    }

    /// Whether [`close`](Self::close) was called (on this bus or a clone).
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// The NATS subject of `channel` on this bus.
    pub fn subject(&self, channel: &Channel) -> String {
        subject(&self.prefix, channel)
    }

    /// Closes the bus and every clone of it: stops its tasks, unsubscribes
    /// every subscription it made (handing what a queue subscription had
    /// received back to its group), then writes out everything published
    /// before (async-nats' `flush`). A connection the bus made
    /// ([`NatsBusBuilder::connect`] and the like) is then drained and
    /// closed; one given to [`NatsBusBuilder::from_client`] stays
    /// connected. The subscriptions' readers see their end; every later
    /// publish, subscription or probe fails with [`Error::Closed`]
    /// (`unavailable`). Closing again does nothing. Fails only when the
    /// flush does (the connection is down): what was published may then be
    /// lost, and everything else is closed all the same.
    pub async fn close(&self) -> Result<()> {
        let st = &self.state;
        if st.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
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
        self.conn.stop();
        let flushed = self.client.flush().await.map_err(Error::Flush);
        if st.owns_client && flushed.is_ok() {
            let _ = self.client.drain().await;
        }
        flushed
    }

    /// Fails with [`Error::Closed`] once the bus is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Checks `channel`'s subject against the bus's limits.
    pub(crate) fn check(&self, channel: &Channel) -> Result<()> {
        check_subject(&self.subject(channel), self.max_subject)
    }

    /// Publishes `payload` (the envelope with its `Msg.channel`) on
    /// `subject`, waiting at most [`PUBLISH_WAIT`] for room in async-nats'
    /// queue.
    pub(crate) async fn publish_raw(&self, subject: String, payload: Bytes) -> Result<()> {
        let max = self.max_message_size();
        if payload.len() > max {
            let size = payload.len();
            return Err(Error::TooLarge { size, max });
        }
        self.check_open()?;
        if !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let publish = self.client.publish(subject, payload);
        tokio::pin!(publish);
        // async-nats queues the publish for its connection task; that queue
        // is bounded and not drained while reconnecting: wait for room at
        // most PUBLISH_WAIT (a timer only when it is full).
        let r = match futures::poll!(&mut publish) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::time::timeout(PUBLISH_WAIT, publish)
                .await
                .map_err(|_| Error::PublishQueueFull(PUBLISH_WAIT))?,
        };
        r.map_err(Error::Publish)
    }

    /// A request with an empty payload to `subject`: "no responders" means
    /// 0 listeners; a reply, or none within `timeout`, 1.
    pub(crate) async fn probe(&self, subject: String, timeout: Duration) -> Result<usize> {
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
}

/// How long a presence probe waits for "no responders" (see
/// [`MessageBus::listeners`]); silence past it means someone listens.
const PRESENCE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[async_trait]
impl MessageBus for NatsBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> psrpc::Result<()> {
        self.check(channel)?;
        let payload = if channel.local.is_empty() {
            msg
        } else {
            psrpc::wire::append_channel(&msg, &channel.local)
        };
        Ok(self.publish_raw(self.subject(channel), payload).await?)
    }

    fn drops(&self) -> &Drops {
        &self.state.drops
    }

    fn compression(&self) -> &psrpc::CompressionOptions {
        &self.compression
    }

    fn check_channel(&self, channel: &Channel) -> psrpc::Result<()> {
        Ok(self.check(channel)?)
    }

    async fn subscribe(&self, channel: &Channel, size: usize) -> psrpc::Result<Subscription> {
        Ok(self.add_chan(channel, size, false).await?)
    }

    async fn subscribe_queue(&self, channel: &Channel, size: usize) -> psrpc::Result<Subscription> {
        Ok(self.add_chan(channel, size, true).await?)
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
}
