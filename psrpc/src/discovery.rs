//! Discovery: every server answers a built-in multi method, so that tools
//! (the `psrpc` command line) can list the servers on a bus and describe
//! their services without a proto file.
//!
//! The method is `Describe` of the reserved service [`SERVICE`]
//! (`PsrpcDiscovery`), a multi RPC: a caller sends a [`DescribeRequest`]
//! and every server on the bus answers with one [`ServerDescription`] per
//! service it serves. Go servers never subscribe to this service, so its
//! traffic does not reach them. A server leaves it out with
//! [`ServerOptions::discovery`](crate::ServerOptions)`.enabled = false`.
//!
//! The messages are in proto package `psrpc.discovery` (type URLs
//! `type.googleapis.com/psrpc.discovery.<Message>`); the repository's
//! protocol document describes them field by field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bus::DynBus;
use crate::info::MethodInfo;
use crate::{Context, Method, RpcServer};

/// The reserved service name of discovery on the wire.
pub const SERVICE: &str = "PsrpcDiscovery";

/// `PsrpcDiscovery.Describe`: a multi method every Rust server answers.
pub static DESCRIBE: Method<DescribeRequest, ServerDescription> = Method::multi("Describe");

/// The (empty) request of `Describe`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeRequest {}

impl prost::Name for DescribeRequest {
    const NAME: &'static str = "DescribeRequest";
    const PACKAGE: &'static str = "psrpc.discovery";
}

/// One server of one service, as it describes itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerDescription {
    /// The server id.
    #[prost(string, tag = "1")]
    pub server_id: String,
    /// The service name on the wire.
    #[prost(string, tag = "2")]
    pub service: String,
    /// The registered methods.
    #[prost(message, repeated, tag = "3")]
    pub methods: Vec<MethodDescription>,
    /// Milliseconds since the server was created.
    #[prost(int64, tag = "4")]
    pub uptime_ms: i64,
    /// Calls answered: unary and multi calls, and streams whose handler ended.
    #[prost(uint64, tag = "5")]
    pub calls_served: u64,
    /// Calls being handled now: unary and multi calls, and open streams.
    #[prost(uint64, tag = "6")]
    pub calls_in_flight: u64,
    /// A `google.protobuf.FileDescriptorSet` of the service's proto files
    /// (empty when the server was not built from generated code).
    #[prost(bytes = "vec", tag = "7")]
    pub file_descriptor_set: Vec<u8>,
    /// The implementation, e.g. `psrpc-rs 0.1.0`.
    #[prost(string, tag = "8")]
    pub runtime: String,
}

impl prost::Name for ServerDescription {
    const NAME: &'static str = "ServerDescription";
    const PACKAGE: &'static str = "psrpc.discovery";
}

/// A registered method and its routing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MethodDescription {
    /// The method name on the wire.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `QUEUE`, `AFFINITY` or `MULTI`.
    #[prost(string, tag = "2")]
    pub routing: String,
    /// Whether it is a stream.
    #[prost(bool, tag = "3")]
    pub stream: bool,
    /// Whether a claim handshake picks the server.
    #[prost(bool, tag = "4")]
    pub require_claim: bool,
    /// The topics it is registered on (none for a method without topic).
    #[prost(message, repeated, tag = "5")]
    pub topics: Vec<Topic>,
}

/// One topic: its segments.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Topic {
    /// The topic segments, in order.
    #[prost(string, repeated, tag = "1")]
    pub parts: Vec<String>,
}

/// Discovery settings of a server.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// Answer `PsrpcDiscovery.Describe` (default: yes).
    pub enabled: bool,
    /// The encoded file descriptor set of the service's protos; generated
    /// servers set it.
    pub file_descriptor_set: Option<&'static [u8]>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            enabled: true,
            file_descriptor_set: None,
        }
    }
}

#[derive(Default)]
struct MethodEntry {
    info: Option<MethodInfo>,
    stream: bool,
    topics: BTreeSet<Vec<String>>,
}

/// What a server tells discovery; kept by the server.
pub(crate) struct Registry {
    service: String,
    server_id: String,
    started: Instant,
    fds: Option<&'static [u8]>,
    methods: Mutex<BTreeMap<String, MethodEntry>>,
    served: AtomicU64,
    in_flight: AtomicU64,
    responder: Mutex<Option<RpcServer>>,
    started_responder: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
}

/// Serves `Describe` for the registry `me` on `bus`.
async fn start_responder(me: std::sync::Weak<Registry>, bus: DynBus) {
    let Some(reg) = me.upgrade() else { return };
    let opts = crate::ServerOptions::default()
        .server_id(&reg.server_id)
        .discovery(DiscoveryOptions {
            enabled: false,
            ..Default::default()
        });
    drop(reg);
    let server = match RpcServer::new(bus, SERVICE, opts).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "psrpc server: discovery not answered");
            return;
        }
    };
    let weak = me.clone();
    let r = server
        .route(&DESCRIBE)
        .handle(move |_ctx: Context, _req: DescribeRequest| {
            let me = weak.upgrade();
            async move {
                me.map(|m| m.describe())
                    .ok_or_else(crate::Error::server_closed)
            }
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "psrpc server: discovery not answered");
        return;
    }
    match me.upgrade() {
        Some(reg) if !reg.stopped.load(Ordering::Acquire) => {
            *reg.responder.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        }
        _ => server.kill(),
    }
}

/// Counts one call of a server from its start until it is dropped.
pub(crate) struct CallGuard(Arc<Registry>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

impl Registry {
    /// The registry of a new server, unless discovery is off (or this is
    /// the discovery service itself).
    pub(crate) fn new(
        opts: &DiscoveryOptions,
        service: &str,
        server_id: &str,
    ) -> Option<Arc<Self>> {
        (opts.enabled && service != SERVICE).then(|| {
            Arc::new(Registry {
                service: service.to_owned(),
                server_id: server_id.to_owned(),
                started: Instant::now(),
                fds: opts.file_descriptor_set,
                methods: Mutex::new(BTreeMap::new()),
                served: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                responder: Mutex::new(None),
                started_responder: Default::default(),
                stopped: Default::default(),
            })
        })
    }

    /// Counts a call as in flight until the guard is dropped, then as
    /// served: two atomic operations, no interceptor.
    pub(crate) fn call_started(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// Records a registration and, at the first, starts answering
    /// discovery (in a task: registering is async and comes back here).
    pub(crate) fn registered(
        self: &Arc<Self>,
        bus: &DynBus,
        method: &MethodInfo,
        topic: &[String],
        stream: bool,
    ) {
        let first = {
            let mut m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
            let first = m.is_empty() && !self.started_responder.swap(true, Ordering::AcqRel);
            let e = m.entry(method.name.to_string()).or_default();
            e.info = Some(method.clone());
            e.stream = stream;
            e.topics.insert(topic.to_vec());
            first
        };
        if first {
            tokio::spawn(start_responder(Arc::downgrade(self), bus.clone()));
        }
    }

    /// Records a deregistration.
    pub(crate) fn deregistered(&self, method: &str, topic: &[String]) {
        let mut m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(method) {
            e.topics.remove(topic);
            if e.topics.is_empty() {
                m.remove(method);
            }
        }
    }

    /// Stops answering discovery.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let server = self
            .responder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = server {
            s.kill();
        }
    }

    fn describe(&self) -> ServerDescription {
        let methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        ServerDescription {
            server_id: self.server_id.clone(),
            service: self.service.clone(),
            methods: methods
                .iter()
                .map(|(name, e)| {
                    let info = e.info.clone().unwrap_or_else(|| MethodInfo::queue("?"));
                    MethodDescription {
                        name: name.clone(),
                        routing: if info.multi {
                            "MULTI"
                        } else if info.affinity_enabled {
                            "AFFINITY"
                        } else {
                            "QUEUE"
                        }
                        .into(),
                        stream: e.stream,
                        require_claim: info.require_claim,
                        topics: e
                            .topics
                            .iter()
                            .filter(|t| !t.is_empty())
                            .map(|t| Topic { parts: t.clone() })
                            .collect(),
                    }
                })
                .collect(),
            uptime_ms: self.started.elapsed().as_millis() as i64,
            calls_served: self.served.load(Ordering::Relaxed),
            calls_in_flight: self.in_flight.load(Ordering::Relaxed),
            file_descriptor_set: self.fds.map(<[u8]>::to_vec).unwrap_or_default(),
            runtime: concat!("psrpc-rs ", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}
