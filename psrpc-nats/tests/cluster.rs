//! The psrpc conformance suite on a 3-node nats-server cluster on loopback:
//! every connection a test opens goes to the next node in turn, so clients
//! and servers of one test sit on different nodes and every message crosses
//! a route.

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

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
    /// nodes learn of it over the routes a moment later, in the order the
    /// node took the subscriptions. So a probe subscribed on a node now,
    /// once heard from another node, shows that the other node knows of
    /// every subscription made on this one before it; one probe per pair.
    async fn settle(&self) {
        let nodes = nodes();
        for (i, a) in nodes.iter().enumerate() {
            let here = async_nats::connect(a.url()).await.expect("connect");
            for b in nodes.iter().take(i).chain(nodes.iter().skip(i + 1)) {
                // A probe of its own per pair of nodes: a late copy of an
                // earlier probe cannot stand in for this one.
                let subject = format!("{}.settle.{}", self.prefix, psrpc::protocol::id::new_id(""));
                let mut probe = here.subscribe(subject.clone()).await.expect("probe");
                here.flush().await.expect("flush");
                let there = async_nats::connect(b.url()).await.expect("connect");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    there
                        .publish(subject.clone(), "".into())
                        .await
                        .expect("publish");
                    there.flush().await.expect("flush");
                    if tokio::time::timeout(Duration::from_millis(20), probe.next())
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "node {} never learned of subscriptions on node {i}",
                        b.url()
                    );
                }
            }
        }
    }
}

psrpc_tests::conformance!(ClusterFactory::new());
