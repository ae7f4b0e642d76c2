//! [`NatsBus`]: the generic [`Bus`] over the [`NatsTransport`], with the
//! constructors and the NATS-specific accessors.

use std::sync::Arc;

use async_nats::Client;
use psrpc::bus::{AsBus, Bus, Channel};
use psrpc::drops::Drops;

use crate::builder::NatsBusBuilder;
use crate::error::Result;
use crate::transport::NatsTransport;

/// The queue group of every queue subscription (Go psrpc's `bus`).
pub const QUEUE_GROUP: &str = "bus";

/// A psrpc [`MessageBus`](psrpc::MessageBus) over NATS, made by
/// [`NatsBus::connect`] or [`NatsBus::builder`]: the generic [`Bus`] (the
/// subscribers of each channel, the dispatch to them, drops, size limit,
/// compression) over a [`NatsTransport`]. Clones share the connection, the
/// subscriptions and [`close`](NatsBus::close).
#[derive(Clone, Debug)]
pub struct NatsBus(Bus<NatsTransport>);

impl AsBus for NatsBus {
    type Transport = NatsTransport;

    fn as_bus(&self) -> &Bus<NatsTransport> {
        &self.0
    }
}

impl NatsBus {
    /// Connects with the default options to the NATS server(s) at `url`
    /// (for example `nats://user:pass@127.0.0.1:4222`; several
    /// comma-separated URLs are allowed); see
    /// [`NatsBusBuilder::connect`]. Fails at once with an `unavailable`
    /// error ([`Error::code`](crate::Error::code)) when no server can be
    /// reached or the credentials are refused.
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
        let transport = NatsTransport::new(&options, client, drops, owns_client);
        NatsBus(Bus::from_transport(transport, options.compression))
    }

    /// The transport underneath.
    pub fn transport(&self) -> &NatsTransport {
        self.0.transport()
    }

    /// The largest message this bus sends: the server's `max_payload` (as
    /// announced in its `INFO`, updated at every reconnection), or less if
    /// set with [`NatsBusBuilder::max_message_size`]. Larger messages that
    /// arrive are dropped and counted.
    pub fn max_message_size(&self) -> usize {
        self.transport().max_message_size()
    }

    /// The longest subject (prefix included) this bus uses.
    pub fn max_subject_len(&self) -> usize {
        self.transport().max_subject
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.transport().is_connected()
    }

    /// Follows [`is_connected`](Self::is_connected) (looked at every 100 ms
    /// until the bus is closed).
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.transport().conn.subscribe()
    }

    /// How many times the connection was re-established since the bus was
    /// made.
    pub fn reconnects(&self) -> u64 {
        self.transport().conn.reconnects()
    }

    /// The subject prefix (empty for none).
    pub fn prefix(&self) -> &str {
        &self.transport().prefix
    }

    /// The async-nats client underneath.
    pub fn client(&self) -> &Client {
        &self.transport().client
    }

    /// How many messages this bus dropped, for any reason (see
    /// [`MessageBus::drops`](psrpc::MessageBus::drops) for the counts by
    /// reason).
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    /// The NATS subject of `channel` on this bus.
    pub fn subject(&self, channel: &Channel) -> String {
        self.transport().subject(channel)
    }

    /// Whether [`close`](Self::close) was called (on this bus or a clone).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Closes the bus and every clone of it: stops its tasks, unsubscribes
    /// every subscription it made (handing what a queue subscription had
    /// received back to its group), then writes out everything published
    /// before (async-nats' `flush`). A connection the bus made
    /// ([`NatsBusBuilder::connect`] and the like) is then drained and
    /// closed; one given to [`NatsBusBuilder::from_client`] stays
    /// connected. The subscriptions' readers see their end; every later
    /// publish or subscription fails with `unavailable` ("bus closed").
    /// Closing again does nothing. Fails only when the flush does (the
    /// connection is down): what was published may then be lost, and
    /// everything else is closed all the same.
    pub async fn close(&self) -> psrpc::Result<()> {
        self.0.close().await
    }
}
