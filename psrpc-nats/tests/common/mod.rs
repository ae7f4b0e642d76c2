//! A real `nats-server` for the tests, and the conformance factory.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use psrpc::bus::DynBus;
use psrpc_nats::NatsBus;
use psrpc_tests::BusFactory;

pub use psrpc_tests::servers::{NatsServer, free_port};

/// The server shared by the tests of one test binary.
pub fn shared() -> &'static NatsServer {
    static SERVER: OnceLock<NatsServer> = OnceLock::new();
    SERVER.get_or_init(|| NatsServer::start(&[]))
}

/// The conformance factory: one shared server; each factory uses its own
/// subject prefix, so that the tests running at once in this process do not
/// hear each other (every test uses the service `MyService`, and, as in Go, every queue method of a service shares one subject
/// would otherwise let one test's queue subscribers take another's
/// messages). Every `connect` is a new NATS connection.
pub struct NatsFactory {
    prefix: String,
}

impl NatsFactory {
    /// A factory with a prefix unique in this process.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        NatsFactory {
            prefix: format!(
                "t{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

#[psrpc::async_trait]
impl BusFactory for NatsFactory {
    fn name(&self) -> &str {
        "nats"
    }
    async fn connect(&self) -> DynBus {
        let url = shared().url();
        std::sync::Arc::new(
            NatsBus::builder()
                .prefix(&self.prefix)
                .connect(&url)
                .await
                .expect("connect"),
        )
    }
}

/// A cluster of `n` nats-servers on loopback, every node routed to every
/// other; returns once every node has its `n - 1` routes.
pub fn cluster(n: usize) -> Vec<NatsServer> {
    let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let name = format!("psrpc{}", std::process::id());
    let nodes: Vec<NatsServer> = (0..n)
        .map(|i| {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            let (server_name, route) = (
                format!("{name}-{i}"),
                format!("nats://127.0.0.1:{}", cluster_ports[i]),
            );
            let routes = routes.join(",");
            NatsServer::start(&[
                "--server_name",
                &server_name,
                "--cluster_name",
                &name,
                "--cluster",
                &route,
                "--routes",
                &routes,
                // Clients stay on the node they were given.
                "--no_advertise=true",
            ])
        })
        .collect();
    let start = Instant::now();
    for node in &nodes {
        loop {
            let routez = node.monitor_get("/routez");
            let routes = routez
                .split("\"num_routes\":")
                .nth(1)
                .and_then(|r| r.trim().split([',', '\n']).next())
                .and_then(|r| r.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if routes >= n - 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the nats cluster did not form: {routez}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    nodes
}
