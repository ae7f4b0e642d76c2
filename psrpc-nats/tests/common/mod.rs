//! A real `nats-server` for the tests, and the conformance factory.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use psrpc::bus::DynBus;
use psrpc_nats::NatsBus;
use psrpc_tests::BusFactory;

const MISSING: &str =
    "nats-server not found: install it with `apt-get install nats-server` or run scripts/test";

fn binary() -> &'static str {
    static BIN: OnceLock<&'static str> = OnceLock::new();
    BIN.get_or_init(|| {
        for b in [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ] {
            if Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
            {
                return b;
            }
        }
        panic!("{MISSING}");
    })
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` child process, killed on drop.
///
/// It runs under a small shell that kills it when its stdin closes, so a
/// server kept in a static (never dropped) still goes when the test process
/// exits.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// The monitoring (HTTP) port.
    pub monitor: u16,
    extra: Vec<String>,
}

impl NatsServer {
    /// A server on a free loopback port with extra arguments.
    pub fn start(extra: &[&str]) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            monitor: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = binary();
        let port = self.port.to_string();
        let monitor = self.monitor.to_string();
        let child = Command::new("sh")
            .arg("-c")
            .arg("\"$@\" & p=$!; read x; kill $p; wait $p")
            .arg("sh")
            .arg(bin)
            .args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor])
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nats-server exited at start: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }

    /// Stops and starts the server again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET of a monitoring endpoint (`/subsz?subs=1`), body only.
    pub fn monitor_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server shared by the tests of one test binary.
pub fn shared() -> &'static NatsServer {
    static SERVER: OnceLock<NatsServer> = OnceLock::new();
    SERVER.get_or_init(|| NatsServer::start(&[]))
}

/// The conformance factory: one shared server; each factory uses its own
/// subject prefix, so that the tests running at once in this process do not
/// hear each other (every test uses the service `MyService`, and quirk Q1
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
            NatsBus::connect(&url)
                .await
                .expect("connect")
                .with_prefix(&self.prefix),
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
            let mut s = NatsServer {
                child: None,
                port: free_port(),
                monitor: free_port(),
                extra: vec![
                    "--server_name".into(),
                    format!("{name}-{i}"),
                    "--cluster_name".into(),
                    name.clone(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                    // Clients stay on the node they were given.
                    "--no_advertise=true".into(),
                ],
            };
            s.spawn();
            s
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
