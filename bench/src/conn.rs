//! Bus connections: one per server and per client, as separate processes
//! would have, remembered for the drop count at the end.

use std::sync::Arc;

use psrpc::bus::DynBus;
use psrpc::{CompressionOptions, LocalBus};
use psrpc_nats::NatsBus;
use psrpc_redis::RedisBus;

use crate::args::BusSpec;

/// One connection to the bus (for `local`, a handle on the one in-process bus).
#[derive(Clone)]
enum Conn {
    Local(LocalBus),
    Redis(RedisBus),
    Nats(NatsBus),
}

impl Conn {
    /// The connection as the runtime takes it.
    fn bus(&self) -> DynBus {
        match self {
            Conn::Local(b) => Arc::new(b.clone()),
            Conn::Redis(b) => Arc::new(b.clone()),
            Conn::Nats(b) => Arc::new(b.clone()),
        }
    }

    /// Deliveries this connection dropped for slow consumers.
    fn dropped(&self) -> u64 {
        match self {
            Conn::Local(b) => b.dropped(),
            Conn::Redis(b) => b.dropped(),
            Conn::Nats(b) => b.dropped(),
        }
    }
}

/// Opens bus connections and remembers them for the drop count at the end.
pub(crate) struct Connector {
    /// The bus connected to.
    pub(crate) spec: BusSpec,
    local: LocalBus,
    conns: Vec<Conn>,
    compression: CompressionOptions,
}

impl Connector {
    /// Connections that gzip their publishes at level `compress` (0: off).
    pub(crate) fn new(spec: BusSpec, compress: u32) -> Self {
        Connector {
            spec,
            local: LocalBus::new(),
            conns: Vec::new(),
            compression: CompressionOptions::default().with_quality(compress),
        }
    }

    /// A new connection of its own (on `local`, a handle on the shared bus).
    pub(crate) async fn connect(&mut self, who: &str) -> Result<DynBus, String> {
        let c = self.compression;
        let conn = match &self.spec {
            BusSpec::Local => Conn::Local(self.local.clone().with_compression(c)),
            BusSpec::Redis(url) => Conn::Redis(
                RedisBus::builder()
                    .compression(c)
                    .connect(url)
                    .await
                    .map_err(|e| format!("{who}: connecting to redis: {e}"))?,
            ),
            BusSpec::Nats(url) => Conn::Nats(
                NatsBus::builder()
                    .compression(c)
                    .connect(url)
                    .await
                    .map_err(|e| format!("{who}: connecting to nats: {e}"))?,
            ),
        };
        let bus = conn.bus();
        self.conns.push(conn);
        Ok(bus)
    }

    /// Deliveries dropped for slow consumers, over every connection.
    pub(crate) fn dropped(&self) -> u64 {
        match self.spec {
            // Every handle counts the one shared bus.
            BusSpec::Local => self.local.dropped(),
            _ => self.conns.iter().map(Conn::dropped).sum(),
        }
    }

    /// What the floor of this bus is.
    pub(crate) fn floor_desc(&self) -> String {
        match self.spec {
            BusSpec::Local => "tokio channel".into(),
            _ => format!(
                "bare {} publish/subscribe ping-pong between separate connections",
                self.spec.kind()
            ),
        }
    }
}
