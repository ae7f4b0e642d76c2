//! The psrpc conformance suite on a 3-node nats-server cluster on loopback:
//! every connection a test opens goes to the next node in turn, so clients
//! and servers of one test sit on different nodes and every message crosses
//! a route.

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc_nats::NatsBus;
use psrpc_tests::BusFactory;

use common::NatsServer;

fn nodes() -> &'static [NatsServer] {
    static NODES: OnceLock<Vec<NatsServer>> = OnceLock::new();
    NODES.get_or_init(|| common::cluster(3))
}

/// Connections round-robin over the nodes; one subject prefix per factory.
struct ClusterFactory {
    prefix: String,
    next: AtomicUsize,
}

impl ClusterFactory {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        ClusterFactory {
            prefix: format!("c{}_{n}", std::process::id()),
            // Tests start on different nodes too.
            next: AtomicUsize::new(n),
        }
    }
}

#[psrpc::async_trait]
impl BusFactory for ClusterFactory {
    fn name(&self) -> &str {
        "nats-cluster"
    }

    async fn connect(&self) -> DynBus {
        let nodes = nodes();
        let node = &nodes[self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        std::sync::Arc::new(
            NatsBus::builder()
                .prefix(&self.prefix)
                .connect(&node.url())
                .await
                .expect("connect"),
        )
    }

    /// A subscription is confirmed by the node it was made on; the other
    /// nodes learn of it over the routes a moment later.
    fn settle(&self) -> Duration {
        Duration::from_millis(50)
    }
}

psrpc_tests::conformance!(ClusterFactory::new());
