//! Shared by the end-to-end tests: real Redis and NATS servers, the bench
//! service served by the psrpc runtime, and runs of the built `psrpc` binary.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use psrpc::bus::DynBus;
use psrpc::{Context, Error, ErrorCode, Method, RpcServer, ServerOptions, ServerStream};
use psrpc_tests::servers::{NatsServer, RedisServer};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Req {
    #[prost(int64, tag = "1")]
    pub seq: i64,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int32, tag = "4")]
    pub count: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Res {
    #[prost(int64, tag = "1")]
    pub seq: i64,
    #[prost(string, tag = "2")]
    pub server_id: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(int64, tag = "1")]
    pub seq: i64,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(int64, tag = "1")]
    pub seq: i64,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(string, tag = "3")]
    pub server_id: String,
}

impl prost::Name for Event {
    const NAME: &'static str = "Event";
    const PACKAGE: &'static str = "psrpcbench";
}

pub static UNARY: Method<Req, Res> = Method::queue("Unary");
pub static AFFINITY: Method<Req, Res> = Method::affinity("Affinity");
pub static MULTI: Method<Req, Res> = Method::multi("Multi");
pub static TOPIC_UNARY: Method<Req, Res> = Method::queue("TopicUnary");
pub static TRIGGER: Method<Req, Res> = Method::queue("Trigger");
pub static BROADCAST: Method<(), Event> = Method::multi("Broadcast");
pub static EVENTS: Method<(), Event> = Method::queue("Events");
pub static ECHO: Method<Msg, Msg> = Method::queue("Echo");

/// A bus server (Redis or NATS) for one test.
pub enum Broker {
    Redis(RedisServer),
    Nats(NatsServer),
}

impl Broker {
    pub fn redis() -> Broker {
        Broker::Redis(RedisServer::start())
    }
    pub fn nats() -> Broker {
        Broker::Nats(NatsServer::start(&[]))
    }
    pub fn url(&self) -> String {
        match self {
            Broker::Redis(r) => r.url(),
            Broker::Nats(n) => n.url(),
        }
    }
    pub async fn connect(&self) -> DynBus {
        match self {
            Broker::Redis(r) => Arc::new(psrpc_redis::RedisBus::connect(&r.url()).await.unwrap()),
            Broker::Nats(n) => Arc::new(psrpc_nats::NatsBus::connect(&n.url()).await.unwrap()),
        }
    }
}

/// The bench service's proto in the repository.
pub fn bench_proto() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/bench.proto")
}

/// A bench server `id` (services `Bench` and `BenchEvents`) with the
/// affinity `affinity`. Requests with text `fail` get `not_found` with a
/// detail, `cancel` gets `canceled`, `slow` sleeps 5 s; the stream refuses
/// seq 99 with `aborted`.
pub async fn bench_server(bus: DynBus, id: &str, affinity: f32) -> (RpcServer, RpcServer) {
    let bench = RpcServer::new(bus.clone(), "Bench", server_options(id))
        .await
        .unwrap();
    let events = RpcServer::new(bus, "BenchEvents", server_options(id))
        .await
        .unwrap();
    let echo = |id: String| {
        move |_ctx: Context, req: Req| {
            let server_id = id.clone();
            async move {
                match req.text.as_str() {
                    "fail" => {
                        return Err(
                            Error::new(ErrorCode::NotFound, "no such thing").with_detail(&Event {
                                seq: req.seq,
                                text: "why".into(),
                                server_id: server_id.clone(),
                            }),
                        );
                    }
                    "cancel" => return Err(Error::new(ErrorCode::Canceled, "gave up")),
                    "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                    _ => {}
                }
                Ok(Res {
                    seq: req.seq,
                    server_id,
                    payload: req.payload,
                })
            }
        }
    };
    bench.route(&UNARY).handle(echo(id.into())).await.unwrap();
    bench
        .route(&AFFINITY)
        .affinity(move |_: &Req| affinity)
        .handle(echo(id.into()))
        .await
        .unwrap();
    bench.route(&MULTI).handle(echo(id.into())).await.unwrap();
    bench
        .route(&TOPIC_UNARY)
        .topic("t1")
        .handle(echo(id.into()))
        .await
        .unwrap();
    bench
        .stream_route(&ECHO)
        .handle(|mut st: ServerStream<Msg, Msg>| async move {
            while let Some(m) = st.recv().await? {
                if m.seq == 99 {
                    st.close_with(Error::new(ErrorCode::Aborted, "seq 99 refused"))
                        .await?;
                    return Ok(());
                }
                st.send(m).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let (b, e, sid) = (bench.clone(), events.clone(), id.to_string());
    bench
        .route(&TRIGGER)
        .handle(move |_ctx: Context, req: Req| {
            let (b, e, sid) = (b.clone(), e.clone(), sid.clone());
            async move {
                for i in 0..req.count {
                    let ev = Event {
                        seq: i as i64 + 1,
                        text: req.text.clone(),
                        server_id: sid.clone(),
                    };
                    e.publish(&EVENTS, (), &ev).await?;
                    b.publish(&BROADCAST, std::slice::from_ref(&req.text), &ev)
                        .await?;
                }
                Ok(Res {
                    seq: req.seq,
                    server_id: sid,
                    payload: Vec::new(),
                })
            }
        })
        .await
        .unwrap();
    (bench, events)
}

/// bench.proto's descriptor set, as psrpc-build embeds it in generated code.
pub fn bench_descriptor_set() -> &'static [u8] {
    static FDS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FDS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
        // As psrpc-build embeds it: encoded by protox, options kept.
        let options = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../psrpc-build/proto/psrpc");
        let mut c = protox::Compiler::new([root.clone(), options]).unwrap();
        c.include_imports(true);
        c.open_file("bench.proto").unwrap();
        c.encode_file_descriptor_set()
    })
}

/// Server options carrying bench.proto's descriptor set for discovery.
pub fn server_options(id: &str) -> ServerOptions {
    ServerOptions::default()
        .server_id(id)
        .discovery(psrpc::discovery::DiscoveryOptions {
            file_descriptor_set: Some(bench_descriptor_set()),
            ..Default::default()
        })
}

/// What a run of `psrpc` gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// Stdout as one JSON document per line.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}\n{self:?}"))
            })
            .collect()
    }

    /// Stdout as exactly one JSON document.
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.json_lines();
        assert_eq!(v.len(), 1, "{self:?}");
        v.remove(0)
    }
}

/// The built binary with `args` on `bus` (may be empty), stdin `input`.
pub fn psrpc_cmd(bus: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_psrpc"));
    c.args(args)
        .env_remove("PSRPC_BUS")
        .env_remove("PSRPC_PREFIX");
    if !bus.is_empty() {
        c.env("PSRPC_BUS", bus);
    }
    c
}

/// Runs `psrpc` to its end (in a blocking thread) and returns what it gave.
pub async fn psrpc(bus: &str, args: &[&str], input: &str) -> Run {
    let mut c = psrpc_cmd(bus, args);
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run psrpc");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input.as_bytes());
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            took: start.elapsed(),
        }
    })
    .await
    .unwrap()
}
